"""The statistical test behind the model-health gate: one-sided Mann-Whitney U (as Kayenta judges canaries).

Rank-based, so one device's stalled window moves one rank, not a mean, and no distribution is assumed.
Written by hand rather than calling ``scipy.stats.mannwhitneyu``: the gate runs for every sku and metric on
every runner tick, and the benchmark replays thousands of rollouts, where scipy's per-call overhead (about
5 ms here, mostly argument handling) is a hundred times the test itself. It is the textbook large-sample
form (average ranks for ties, tie-corrected variance, continuity correction), the same as scipy's
``method="asymptotic"``; tests/test_rollout_evidence.py checks the two agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return u, 1.0
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(variance)
    return u, 0.5 * math.erfc(z / math.sqrt(2))


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
