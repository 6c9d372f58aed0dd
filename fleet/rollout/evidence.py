"""The model-health gate as canary analysis: per sku and metric, the updated cohort's telemetry windows since
its deployments succeeded against the not-yet-updated devices' windows over the same span. Pure.

Each comparison is a one-sided Mann-Whitney U test (``fleet.rollout.stats``) of "the updated cohort is worse
than the baseline by more than the tolerance" (a share of the gate's effect size: the square root of a
ratio, half of a difference, a quarter for error rates), with three outcomes: ``inconclusive`` (too few
devices or windows yet, or a test that could not fail whatever the windows), ``fail`` (p below the comparison's
level, and for latency the medians also differ by ``min_p95_delta_ms``) and ``pass``. ``alpha`` is the gate's
family-wise level: an evaluation runs one test per sku and metric (15 for three skus), and an abort needs only
one to fail, so each is decided at ``alpha / m`` (Bonferroni), m the comparisons that reached a test in that
evaluation. Holm's step-down would reject its first comparison at the same ``alpha / m``, so the abort decision
would be the same; it differs only in which further comparisons are listed as failed. Each comparison reports the design
effect of the windows' clustering in devices; with ``HealthGate.clustered`` the test's variance is widened by
it. A fail aborts only when it holds at ``consecutive`` evaluations ``eval_interval_s`` apart; each
evaluation is recomputed from the windows (evidence cut off ``k * eval_interval_s`` before the newest updated
window), so the decision keeps no state and survives a restart.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from operator import attrgetter
from typing import Any

from device_agent.protocol import DeploymentState
from fleet.rollout.model import DeploymentView, DeviceView, Health, HealthGate
from fleet.rollout.stats import TEST_NAME, clustered_greater, median


class Outcome(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Metric:
    """One compared metric: which window field, whether higher is worse, and how its effect is measured."""

    name: str
    field: str
    higher_is_worse: bool
    ratio: bool  # effect as updated/baseline (latency), else as a difference in the worse direction
    threshold: Callable[[HealthGate], float]
    share: float = 0.5  # the tolerance as a share of the effect size (of its logarithm for ratios)


METRICS = (
    # Errors come in whole counts per window (1 of 50 inferences is 2 pp), so a shift of half of 5 pp hides most
    # of the regression in the ties; a quarter keeps the test's power (bench/gates.py measures both sides).
    Metric("error rate", "error_rate", True, False, lambda g: g.max_error_rate_increase, share=0.25),
    Metric("p95 latency", "lat_p95_ms", True, True, lambda g: g.max_p95_ratio),
    Metric("p50 latency", "lat_p50_ms", True, True, lambda g: g.max_p95_ratio),
    Metric("confidence", "conf_mean", False, False, lambda g: g.max_conf_drop),
    Metric("drift", "psi_max", True, False, lambda g: g.max_psi),
)


@dataclass(frozen=True)
class Cohorts:
    """One sku's windows: per updated device, per baseline device (each device's newest first)."""

    updated: list[list[Health]]
    baseline: list[list[Health]]

    def counts(self) -> tuple[int, int, int, int]:
        """Devices with windows (updated, baseline) and windows (updated, baseline)."""
        return len(self.updated), len(self.baseline), sum(map(len, self.updated)), sum(map(len, self.baseline))


@dataclass(frozen=True)
class MetricEvidence:
    """One sku's comparison of one metric at one evaluation, as status shows it."""

    sku: str
    metric: str
    outcome: Outcome
    devices: tuple[int, int]  # (updated, baseline) devices with windows in the span
    windows: tuple[int, int]  # (updated, baseline) windows the test used
    updated: float | None  # median of the updated cohort's windows
    baseline: float | None  # median of the baseline's windows
    effect: float | None  # observed: updated/baseline for latency, the worse-direction difference otherwise
    threshold: float  # the effect size the gate is built to catch
    tolerance: float  # the effect the test must show to be exceeded (a share of the threshold)
    test: str
    statistic: float | None  # U of the updated cohort
    p_value: float | None
    deff: float | None = None  # design effect of the windows' clustering in devices (widens the test if clustered)
    alpha: float | None = None  # the level this comparison was decided at: the gate's alpha / comparisons tested
    streak: int = 0  # consecutive failed evaluations, this one included
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome.value}

    def describe(self) -> str:
        """One line for an abort reason or a log: the sku, the metric and the numbers."""
        ratio = next(m.ratio for m in METRICS if m.name == self.metric)
        size = f"x{self.threshold:g}" if ratio else f"{self.threshold:+g}"
        seen = f"x{self.effect:.2f}" if ratio else f"{self.effect:+.3f}"
        return (
            f"sku {self.sku}: {self.metric} {self.updated:.3f} vs {self.baseline:.3f} ({seen}, effect size {size}; "
            f"U={self.statistic:g} p={self.p_value:.2g} DEFF={self.deff or 1:.2g}, "
            f"{self.devices[0]}/{self.devices[1]} devices, "
            f"{self.windows[0]}/{self.windows[1]} windows, {self.streak} failed evaluations in a row at level "
            f"{self.alpha or 0:.2g})"
        )


@dataclass(frozen=True)
class Verdict:
    """The gate's evidence now and what it means for the stage."""

    evidence: tuple[MetricEvidence, ...]
    consecutive: int

    @property
    def failures(self) -> list[MetricEvidence]:
        """The comparisons that failed ``consecutive`` evaluations in a row: abort."""
        return [e for e in self.evidence if e.streak >= self.consecutive]

    @property
    def pending(self) -> list[MetricEvidence]:
        """Comparisons still deciding: a fail streak under way, or too few windows while both cohorts exist."""
        growing = [e for e in self.evidence if e.outcome is Outcome.INCONCLUSIVE and e.note == "too few windows"]
        return [e for e in self.evidence if e.outcome is Outcome.FAIL] + growing

    def reason(self) -> str:
        return "; ".join(e.describe() for e in self.failures)[:900]


def _windows(dev: DeviceView, since: float, until: float, keep: int) -> list[Health]:
    return [w for w in reversed(dev.windows) if since <= w.ts <= until][:keep]


def cohorts(
    devices: Iterable[DeviceView], deployments: dict[str, DeploymentView], gate: HealthGate, until: float
) -> dict[str, Cohorts]:
    """Per sku, the windows up to ``until``: updated devices' since their success + ``settle_s``, baseline
    (devices this rollout has not touched) since the earliest of those; at most ``max_samples`` per cohort."""
    by_sku: dict[str, tuple[list[tuple[DeviceView, float]], list[DeviceView]]] = {}
    for dev in devices:
        updated, baseline = by_sku.setdefault(dev.sku, ([], []))
        dep = deployments.get(dev.id)
        if dep is None:
            baseline.append(dev)
        elif dep.state is DeploymentState.SUCCEEDED and dep.finished_at is not None:
            updated.append((dev, dep.finished_at + gate.settle_s))
    out: dict[str, Cohorts] = {}
    for sku, (updated, baseline) in sorted(by_sku.items()):
        since = min((s for _, s in updated), default=math.inf)
        keep_u = max(1, gate.max_samples // max(1, len(updated)))
        keep_b = max(1, gate.max_samples // max(1, len(baseline)))
        u = [w for w in (_windows(d, s, until, keep_u) for d, s in updated) if w]
        b = [w for w in (_windows(d, since, until, keep_b) for d in baseline) if w]
        out[sku] = Cohorts(u, b)
    return out


def _values(per_device: list[list[Health]], field: str, sign: float) -> list[list[float]]:
    """Per device, its windows' values of ``field`` (negated when lower is worse); devices without any left out."""
    get = attrgetter(field)
    out = [[sign * v for v in map(get, ws) if v is not None] for ws in per_device]
    return [vs for vs in out if vs]


@dataclass(frozen=True)
class _Tested:
    """One comparison's test before its level is known: the evidence, the smallest p-value these cohorts could
    give (``p_min``: a complete separation) and whether a latency shift passes the ms floor."""

    evidence: MetricEvidence
    p_min: float = 1.0
    shift_ok: bool = True

    @property
    def ran(self) -> bool:
        return self.evidence.p_value is not None

    def decide(self, alpha: float) -> MetricEvidence:
        """The outcome at level ``alpha`` (a comparison without a test stays as it is)."""
        e = self.evidence
        if e.p_value is None:
            return e
        if self.p_min >= alpha:  # even a complete separation could not fail: too few devices (for the clustering)
            return _with(e, outcome=Outcome.INCONCLUSIVE, note="underpowered", alpha=alpha)
        failed = e.p_value < alpha and self.shift_ok
        return _with(e, outcome=Outcome.FAIL if failed else Outcome.PASS, alpha=alpha)


def _test(sku: str, c: Cohorts, metric: Metric, gate: HealthGate) -> _Tested:
    """One metric of one sku at one evaluation, its outcome not yet decided."""
    threshold = metric.threshold(gate)
    tolerance = threshold**metric.share if metric.ratio else threshold * metric.share
    sign = 1.0 if metric.higher_is_worse else -1.0
    upd_dev, base_dev = _values(c.updated, metric.field, sign), _values(c.baseline, metric.field, sign)
    upd, base = [v for vs in upd_dev for v in vs], [v for vs in base_dev for v in vs]
    nu, nb, wu, wb = c.counts()
    blank = MetricEvidence(
        sku=sku,
        metric=metric.name,
        outcome=Outcome.INCONCLUSIVE,
        devices=(nu, nb),
        windows=(len(upd), len(base)),
        updated=None,
        baseline=None,
        effect=None,
        threshold=threshold,
        tolerance=tolerance,
        test=TEST_NAME,
        statistic=None,
        p_value=None,
    )
    if nu < gate.min_devices or nb < gate.min_devices:
        return _Tested(_with(blank, note="too few devices"))
    if (not upd or not base) and wu >= gate.min_windows and wb >= gate.min_windows:
        return _Tested(_with(blank, note="not reported"))  # the devices do not send this metric: nothing to wait for
    if len(upd) < gate.min_windows or len(base) < gate.min_windows:
        return _Tested(_with(blank, note="too few windows"))
    mu, mb = median(upd), median(base)
    if metric.ratio:
        shifted = [[v / tolerance for v in vs] for vs in upd_dev]
        effect = mu / mb if mb > 0 else math.inf
        shift_ok = mu - mb > gate.min_p95_delta_ms
    else:
        shifted = [[v - tolerance for v in vs] for vs in upd_dev]
        effect, shift_ok = mu - mb, True
    u, p, deff, p_min = clustered_greater(shifted, base_dev, gate.clustered)
    seen = {"updated": sign * mu, "baseline": sign * mb, "effect": effect, "statistic": u, "p_value": p, "deff": deff}
    return _Tested(_with(blank, **seen), p_min, shift_ok)


def compare(sku: str, c: Cohorts, metric: Metric, gate: HealthGate, alpha: float | None = None) -> MetricEvidence:
    """One metric of one sku at one evaluation, decided at ``alpha`` (the gate's own if None; ``streak`` left 0)."""
    return _test(sku, c, metric, gate).decide(gate.alpha if alpha is None else alpha)


def _with(e: MetricEvidence, **changes: Any) -> MetricEvidence:
    return replace(e, **changes)


def evaluate(
    devices: Iterable[DeviceView], deployments: dict[str, DeploymentView], gate: HealthGate, until: float
) -> list[MetricEvidence]:
    """Every sku's comparison of every metric with the evidence up to ``until``, each decided at the gate's
    ``alpha`` divided by the number of comparisons that reached a test (Bonferroni: see the module's doc)."""
    tested = [
        _test(sku, c, metric, gate)
        for sku, c in cohorts(devices, deployments, gate, until).items()
        for metric in METRICS
    ]
    alpha = gate.alpha / max(1, sum(t.ran for t in tested))
    return [t.decide(alpha) for t in tested]


def judge(
    devices: Iterable[DeviceView], deployments: dict[str, DeploymentView], gate: HealthGate, now: float
) -> Verdict:
    """The evidence now, each failed comparison with its count of consecutive failed evaluations."""
    devices = tuple(devices)
    current = evaluate(devices, deployments, gate, now)
    out: list[MetricEvidence] = []
    for e in current:
        streak = 0
        if e.outcome is Outcome.FAIL:
            streak = _streak(devices, deployments, gate, now, e)
        out.append(_with(e, streak=streak))
    return Verdict(tuple(out), max(1, gate.consecutive))


def _streak(
    devices: tuple[DeviceView, ...],
    deployments: dict[str, DeploymentView],
    gate: HealthGate,
    now: float,
    e: MetricEvidence,
) -> int:
    """How many evaluations in a row this comparison failed (up to ``consecutive``): evaluation k sees the
    windows up to ``eval_interval_s * k`` before the updated cohort's newest, so no new telemetry, no new
    evaluation (a silent cohort cannot fail twice on the same evidence). Each earlier evaluation is decided at
    this one's level (``e.alpha``)."""
    metric = next(m for m in METRICS if m.name == e.metric)
    sku_devices = tuple(d for d in devices if d.sku == e.sku)
    c = cohorts(sku_devices, deployments, gate, now)[e.sku]
    newest = max(ws[0].ts for ws in c.updated)
    streak = 1
    while streak < max(1, gate.consecutive):
        c = cohorts(sku_devices, deployments, gate, newest - streak * gate.eval_interval_s)[e.sku]
        if compare(e.sku, c, metric, gate, e.alpha).outcome is not Outcome.FAIL:
            break
        streak += 1
    return streak
