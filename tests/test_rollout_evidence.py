"""The model-health gate as canary analysis, pure: telemetry windows in, evidence and decisions out, with a
clock we control (window timestamps and ``now`` are plain numbers)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from scipy.stats import mannwhitneyu

from device_agent.protocol import DeploymentState as D
from fleet.rollout import engine, evidence, stats
from fleet.rollout.evidence import Outcome
from fleet.rollout.model import (
    DeploymentView,
    DeviceView,
    Gates,
    Health,
    HealthGate,
    Phase,
    RolloutSpec,
    RolloutState,
    RolloutView,
    Stage,
    Threshold,
    Transition,
    deployment_id,
)

T0 = 1_700_000_000.0
STEP = 10.0  # seconds between telemetry windows (the agent's default interval)
GATE = HealthGate(settle_s=0.0, eval_interval_s=STEP)


def windows(device: str, count: int, *, start: float = T0, slow: float = 1.0, **shift: float) -> tuple[Health, ...]:
    """``count`` windows of one healthy device (seeded jitter), ``slow`` times the latency, fields shifted."""
    rng = random.Random(device)
    out = []
    for i in range(count):
        p50 = 4.0 * rng.uniform(0.95, 1.05) * slow
        h = Health(
            start + (i + 1) * STEP,
            error_rate=max(0.0, rng.gauss(0.01, 0.005)),
            lat_p95_ms=p50 * 1.5,
            psi_max=max(0.0, rng.gauss(0.05, 0.01)),
            conf_mean=rng.gauss(0.9, 0.01),
            lat_p50_ms=p50,
        )
        out.append(replace(h, **{k: getattr(h, k) + v for k, v in shift.items()}))
    return tuple(out)


def rollout(
    count: int, *, updated: int = 2, gate: HealthGate = GATE, bake_s: float = 60.0, **bad: float
) -> RolloutView:
    """Sku a and b with ``count`` windows per device since T0; ``updated`` devices per sku succeeded at T0,
    and on sku b those have ``bad`` (slow=..., or field shifts)."""
    devices, deps = [], {}
    for sku in ("a", "b"):
        for i in range(6):
            dev_id = f"{sku}-{i}"
            is_updated = i < updated
            extra = bad if sku == "b" and is_updated else {}
            devices.append(DeviceView(dev_id, sku, windows=windows(dev_id, count, **extra)))
            if is_updated:
                did = deployment_id(1, dev_id, 1)
                deps[dev_id] = DeploymentView(dev_id, did, D.SUCCEEDED, 0, sent_at=T0 - 5, finished_at=T0)
    g = Gates(bake_s=bake_s, health=gate)
    spec = RolloutSpec("digits@2.0.0", 2, (Stage(Threshold(34.0), g), Stage(Threshold(100.0), g)))
    return RolloutView(1, spec, RolloutState.RUNNING, 0, Phase.BAKING, T0, tuple(devices), deps)


def at(v: RolloutView, count: int) -> float:
    """The time of the ``count``-th window."""
    return T0 + count * STEP


@pytest.mark.parametrize("seed", range(6))
def test_mann_whitney_u_matches_scipy_with_ties(seed: int) -> None:
    rng = random.Random(seed)
    x = [round(rng.gauss(0.3, 1.0), 1) for _ in range(rng.randint(1, 60))]
    y = [round(rng.gauss(0.0, 1.0), 1) for _ in range(rng.randint(2, 300))]
    u, p = stats.greater(x, y)
    ref = mannwhitneyu(x, y, alternative="greater", method="asymptotic")
    assert u == pytest.approx(float(ref.statistic)) and p == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-12)


def test_mann_whitney_u_undecidable_cases_are_not_significant() -> None:
    assert stats.greater([], [1.0]) == (0.0, 1.0)
    assert stats.greater([0.0, 0.0], [0.0, 0.0, 0.0])[1] == 1.0
    assert stats.median([3.0, 1.0, 2.0, 10.0]) == 2.5


def test_a_good_release_passes_every_metric_and_the_stage_moves_on() -> None:
    v = rollout(8)
    verdict = evidence.judge(v.devices, v.deployments, GATE, at(v, 8))
    assert {(e.sku, e.outcome) for e in verdict.evidence} == {("a", Outcome.PASS), ("b", Outcome.PASS)}
    assert len(verdict.evidence) == 2 * len(evidence.METRICS)
    e = verdict.evidence[0]
    assert e.devices == (2, 4) and e.windows == (16, 32) and e.test == "mann-whitney-u" and e.p_value is not None
    acts = engine.tick(v, T0 + 60)
    assert isinstance(acts[0], Transition) and acts[0].reason == "stage 1 baked"


def test_one_stalled_window_does_not_abort_a_good_release() -> None:
    """The issue's false abort: one device's window at 14.1 ms p95 against a 0.2 ms neighbourhood."""
    v = rollout(8)
    stalled = tuple(
        replace(d, windows=(*d.windows[:-1], replace(d.windows[-1], lat_p95_ms=14.1, lat_p50_ms=9.0)))
        if d.id == "b-0"
        else d
        for d in v.devices
    )
    verdict = evidence.judge(stalled, v.deployments, GATE, at(v, 8))
    assert not verdict.failures and all(e.outcome is Outcome.PASS for e in verdict.evidence)


def test_a_slower_release_aborts_after_consecutive_failed_evaluations_naming_sku_and_numbers() -> None:
    v = rollout(8, slow=1.6)
    verdict = evidence.judge(v.devices, v.deployments, GATE, at(v, 6))  # min_windows=5 per cohort: from window 3
    p50 = next(e for e in verdict.evidence if e.sku == "b" and e.metric == "p50 latency")
    assert p50.outcome is Outcome.FAIL and p50.streak == 3 and p50.effect == pytest.approx(1.6, rel=0.1)
    assert all(e.outcome is Outcome.PASS for e in verdict.evidence if e.sku == "a")
    four = rollout(4, slow=1.6)  # only 4 windows so far: evaluations at windows 3 and 4 failed
    early = evidence.judge(four.devices, four.deployments, GATE, at(v, 4) + 100)
    assert {e.streak for e in early.evidence if e.metric == "p50 latency" and e.sku == "b"} == {2}
    assert not early.failures and early.pending  # failing twice: not yet an abort, the stage holds
    assert engine.tick(four, at(v, 4) + 100) == []  # bake time over, no new telemetry, a fail streak under way
    acts = engine.tick(v, at(v, 6))
    assert isinstance(acts[0], Transition) and acts[0].state is RolloutState.ABORTED
    assert acts[0].reason.startswith("model health: sku b: p95 latency") and "p50 latency" in acts[0].reason
    assert "effect size x1.5" in acts[0].reason and "3 failed evaluations in a row" in acts[0].reason


def test_each_comparison_is_decided_at_alpha_over_the_comparisons_tested() -> None:
    """Ten comparisons (two skus, five metrics) and one abort decision: each at 0.05 / 10. A slowdown just past the
    tolerance (p about 0.02) fails sku b's latency alone at 0.05, not as one of ten; a clear one fails both."""
    v = rollout(8, slow=1.265)
    verdict = evidence.judge(v.devices, v.deployments, GATE, at(v, 8))
    tested = [e for e in verdict.evidence if e.p_value is not None]
    assert len(tested) == 10 and {e.alpha for e in verdict.evidence} == {GATE.alpha / 10}
    p50 = next(e for e in verdict.evidence if e.sku == "b" and e.metric == "p50 latency")
    assert p50.p_value is not None and GATE.alpha / 10 < p50.p_value < GATE.alpha
    assert p50.outcome is Outcome.PASS and not verdict.failures and not verdict.pending
    cohort = evidence.cohorts(v.devices, v.deployments, GATE, at(v, 8))["b"]
    p50_metric = next(m for m in evidence.METRICS if m.name == "p50 latency")
    assert evidence.compare("b", cohort, p50_metric, GATE).outcome is Outcome.FAIL  # alone, at the gate's 0.05
    clear = rollout(8, slow=1.3)
    failed = evidence.judge(clear.devices, clear.deployments, GATE, at(clear, 8)).failures
    assert {(e.sku, e.metric) for e in failed} == {("b", "p50 latency"), ("b", "p95 latency")}
    assert all(e.p_value is not None and e.p_value < e.alpha == GATE.alpha / 10 for e in failed)


@pytest.mark.parametrize(
    ("bad", "metric"),
    [({"error_rate": 0.05}, "error rate"), ({"conf_mean": -0.10}, "confidence"), ({"psi_max": 0.25}, "drift")],
)
def test_each_regression_at_its_effect_size_fails_its_metric(bad: dict[str, float], metric: str) -> None:
    v = rollout(8, **bad)
    verdict = evidence.judge(v.devices, v.deployments, GATE, at(v, 8))
    assert [(e.sku, e.metric) for e in verdict.failures] == [("b", metric)]


def test_drift_of_the_world_is_reported_but_only_drift_beyond_the_neighbours_fails() -> None:
    v = rollout(8)
    world = tuple(replace(d, windows=tuple(replace(w, psi_max=w.psi_max + 0.6) for w in d.windows)) for d in v.devices)  # type: ignore[operator]
    verdict = evidence.judge(world, v.deployments, GATE, at(v, 8))
    drift = [e for e in verdict.evidence if e.metric == "drift"]
    assert all(e.outcome is Outcome.PASS and e.updated is not None and e.updated > 0.6 for e in drift)


def test_too_few_windows_is_inconclusive_and_holds_the_stage_up_to_the_limit() -> None:
    gate = replace(GATE, min_windows=50, max_inconclusive_s=120.0)
    v = rollout(8, gate=gate, bake_s=30.0)
    verdict = evidence.judge(v.devices, v.deployments, gate, at(v, 8))
    assert {e.outcome for e in verdict.evidence} == {Outcome.INCONCLUSIVE}
    assert {e.note for e in verdict.evidence} == {"too few windows"}
    assert engine.tick(v, T0 + 100) == []  # bake over, evidence still growing: keep baking
    acts = engine.tick(v, T0 + 151)
    assert isinstance(acts[0], Transition) and acts[0].stage == 1
    assert acts[0].reason == "stage 1 baked (health gate still undecided after 120 s more)"


def test_without_a_baseline_the_gate_is_inconclusive_and_does_not_hold() -> None:
    v = rollout(8, updated=6)  # every device updated: nobody to compare with
    verdict = evidence.judge(v.devices, v.deployments, GATE, at(v, 8))
    assert {e.note for e in verdict.evidence} == {"too few devices"} and not verdict.pending
    acts = engine.tick(v, T0 + 60)
    assert isinstance(acts[0], Transition) and acts[0].reason == "stage 1 baked"


def test_a_metric_the_devices_do_not_send_is_not_waited_for() -> None:
    v = rollout(8)
    quiet = tuple(replace(d, windows=tuple(replace(w, lat_p50_ms=None) for w in d.windows)) for d in v.devices)
    verdict = evidence.judge(quiet, v.deployments, GATE, at(v, 8))
    p50 = [e for e in verdict.evidence if e.metric == "p50 latency"]
    assert {(e.outcome, e.note) for e in p50} == {(Outcome.INCONCLUSIVE, "not reported")} and not verdict.pending


def test_windows_before_success_and_settle_do_not_count() -> None:
    gate = replace(GATE, settle_s=45.0)
    v = rollout(8, gate=gate, slow=1.6)
    cohorts = evidence.cohorts(v.devices, v.deployments, gate, at(v, 8))
    assert cohorts["b"].counts() == (2, 4, 2 * 4, 4 * 4)  # windows 5..8 (T0+50..80) are past T0+45
    early = evidence.cohorts(v.devices, v.deployments, gate, T0 + 44)
    assert early["b"].counts() == (0, 0, 0, 0)


def test_a_latency_shift_under_the_delta_floor_does_not_fail() -> None:
    gate = replace(GATE, min_p95_delta_ms=10.0)  # the medians differ by about 2.4 ms (p50) and 3.6 ms (p95)
    v = rollout(8, gate=gate, slow=1.6)
    assert not evidence.judge(v.devices, v.deployments, gate, at(v, 8)).failures


def test_the_sample_cap_keeps_each_device_newest_windows() -> None:
    gate = replace(GATE, max_samples=8)
    v = rollout(30, gate=gate)
    c = evidence.cohorts(v.devices, v.deployments, gate, at(v, 30))["a"]
    assert c.counts() == (2, 4, 8, 8)
    assert [w.ts for w in c.updated[0]] == [at(v, 30), at(v, 29), at(v, 28), at(v, 27)]


def test_with_one_window_per_device_the_clustered_test_is_the_plain_one() -> None:
    rng = random.Random(7)
    x, y = [rng.gauss(0.5, 1.0) for _ in range(20)], [rng.gauss(0.0, 1.0) for _ in range(40)]
    u, p, deff, _ = stats.clustered_greater([[v] for v in x], [[v] for v in y])
    assert deff == 1.0 and (u, p) == pytest.approx(stats.greater(x, y))


def test_one_device_per_cohort_counts_once_and_cannot_fail_a_clustered_gate() -> None:
    _, p, deff, p_min = stats.clustered_greater([[float(v) for v in range(100, 110)]], [[float(v) for v in range(10)]])
    assert deff == 10.0 and p_min == p and p > 0.05  # complete separation, yet one device against one
    _, p_plain, _, _ = stats.clustered_greater([[float(v) for v in range(100, 110)]], [[0.0] * 10], clustered=False)
    assert p_plain < 1e-3


def test_a_device_simply_slower_than_its_neighbours_fails_only_the_unclustered_gate() -> None:
    """Sku b's one updated device is 1.35x slower by itself (its neighbours differ by +-10 %): the windows are
    clustered in devices (DEFF well above 1), so the clustered gate does not blame the release."""
    devices, deps = [], {}
    for i, slow in enumerate((1.35, 0.9, 0.95, 1.0, 1.05, 1.1)):
        devices.append(DeviceView(f"b-{i}", "b", windows=windows(f"b-{i}", 12, slow=slow)))
    deps["b-0"] = DeploymentView("b-0", deployment_id(1, "b-0", 1), D.SUCCEEDED, 0, sent_at=T0 - 5, finished_at=T0)
    plain = evidence.judge(devices, deps, GATE, T0 + 12 * STEP)
    assert [e.metric for e in plain.failures] == ["p95 latency", "p50 latency"]
    clustered = replace(GATE, clustered=True)
    verdict = evidence.judge(devices, deps, clustered, T0 + 12 * STEP)
    p50 = next(e for e in verdict.evidence if e.metric == "p50 latency")
    assert not verdict.failures and p50.deff is not None and p50.deff > 5 and p50.outcome is not Outcome.FAIL
