"""The statistical test behind the model-health gate: one-sided Mann-Whitney U (as Kayenta judges canaries).

Rank-based, so one device's stalled window moves one rank, not a mean, and no distribution is assumed.
Written by hand rather than calling ``scipy.stats.mannwhitneyu``: the gate runs for every sku and metric on
every runner tick, and the benchmark replays thousands of rollouts, where scipy's per-call overhead (about
5 ms here, mostly argument handling) is a hundred times the test itself. It is the textbook large-sample
form (average ranks for ties, tie-corrected variance, continuity correction), the same as scipy's
``method="asymptotic"``; tests/test_rollout_evidence.py checks the two agree.

A device's windows are not independent samples (a device that is simply slower than its neighbours is slower
in every window), so ``clustered_greater`` can widen the variance by Kish's design effect 1 + (m - 1) * ICC, with
m the windows per device and ICC the share of the ranks' variance between devices of the same cohort (one-way
ANOVA nested in the cohorts, so a real regression does not count as clustering). This is the usual
approximation of the clustered rank-sum test (Rosner, Glynn and Lee, Biometrics 2003); with one device per
cohort ICC cannot be estimated and is taken as 1: each device counts once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

TEST_NAME = "mann-whitney-u"


def _ranks(values: list[tuple[float, int]]) -> tuple[float, float]:
    """Sum of the ranks of the entries tagged 1 (average ranks for ties) and the tie term sum(t^3 - t)."""
    values.sort()
    rank_sum, ties, i, n = 0.0, 0.0, 0, len(values)
    while i < n:
        j, tagged, value = i, values[i][1], values[i][0]
        while j + 1 < n and values[j + 1][0] == value:
            j += 1
            tagged += values[j][1]
        t = j - i + 1
        rank_sum += ((i + j) / 2 + 1) * tagged
        ties += t**3 - t
        i = j + 1
    return rank_sum, ties


def greater(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """``(U, p)``: U of ``x`` and the one-sided p-value that ``x`` tends to be larger than ``y``.

    p is 1.0 when undecidable (an empty side, or every value tied).
    """
    n1, n2 = len(x), len(y)
    if not n1 or not n2:
        return 0.0, 1.0
    rank_sum, ties = _ranks([(v, 1) for v in x] + [(v, 0) for v in y])
    u = rank_sum - n1 * (n1 + 1) / 2
    return u, _p_value(u, n1, n2, ties, 1.0)


def _p_value(u: float, n1: int, n2: int, ties: float, deff: float) -> float:
    n = n1 + n2
    variance = deff * n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return 1.0
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


def clustered_greater(
    x: Sequence[Sequence[float]], y: Sequence[Sequence[float]], clustered: bool = True
) -> tuple[float, float, float, float]:
    """``(U, p, deff, p_min)`` for windows grouped per device (``x[device]``): U of ``x`` over ``y`` pooled, its
    one-sided p-value, the design effect ``deff`` (the variance is widened by it when ``clustered``), and
    ``p_min``, the p-value if every ``x`` window ranked above every ``y`` window (underpowered if >= alpha).

    numpy (lazily imported: the server's gate ranks up to 2,000 windows per metric and tick, the benchmark
    millions) ranks them; the arithmetic is the same as ``greater``'s.
    """
    import numpy as np

    sizes = np.array([len(g) for g in (*x, *y)], dtype=np.int64)
    n1 = int(sizes[: len(x)].sum())
    n2 = int(sizes.sum()) - n1
    if not n1 or not n2:
        return 0.0, 1.0, 1.0, 1.0
    values = np.fromiter((v for g in (*x, *y) for v in g), dtype=np.float64, count=n1 + n2)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # average ranks for ties
    ties = float((counts.astype(np.float64) ** 3 - counts).sum())
    u = float(ranks[:n1].sum()) - n1 * (n1 + 1) / 2
    deff = design_effect(ranks, sizes, len(x))
    widen = deff if clustered else 1.0
    return u, _p_value(u, n1, n2, ties, widen), deff, _p_value(n1 * n2, n1, n2, 0.0, widen)


def design_effect(ranks: Any, sizes: Any, first: int) -> float:
    """Kish's design effect 1 + (m - 1) * ICC of ``ranks`` (numpy arrays) clustered in devices of ``sizes``, the
    first ``first`` devices one cohort and the rest the other.

    m is the size-weighted mean of the windows per device; ICC comes from a one-way ANOVA of devices nested in
    the two cohorts; it is taken as 1 when no cohort has two devices.
    """
    import numpy as np

    n, k = int(sizes.sum()), len(sizes)
    m_bar = float((sizes**2).sum()) / n
    df_between, df_within = k - 2, n - k
    if m_bar <= 1.0:
        return 1.0
    if df_between < 1 or df_within < 1:
        return m_bar
    device = np.repeat(np.arange(k), sizes)
    means = np.bincount(device, weights=ranks, minlength=k) / sizes
    within = float(((ranks - means[device]) ** 2).sum())
    between = weighted = 0.0
    for part in (slice(0, first), slice(first, k)):
        m, s = means[part], sizes[part]
        between += float((s * (m - (s * m).sum() / s.sum()) ** 2).sum())
        weighted += float((s**2).sum()) / float(s.sum())
    ms_between, ms_within = between / df_between, within / df_within
    m0 = (n - weighted) / df_between  # the ANOVA's mean group size for unequal groups
    sigma_b = max(0.0, (ms_between - ms_within) / m0)
    icc = sigma_b / (sigma_b + ms_within) if sigma_b + ms_within > 0 else 0.0
    return 1.0 + (m_bar - 1.0) * icc


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
