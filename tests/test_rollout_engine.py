"""The pure rollout core, driven with a clock we control: no broker, no store, no threads."""

from __future__ import annotations

from dataclasses import replace

import pytest

from device_agent.protocol import DeploymentState as D
from fleet.errors import ConflictError, InvalidRequestError
from fleet.rollout import engine
from fleet.rollout.model import (
    Deploy,
    DeploymentView,
    DeviceView,
    Gates,
    Health,
    HealthGate,
    Phase,
    Rollback,
    RolloutSpec,
    RolloutState,
    RolloutView,
    Selector,
    Stage,
    Threshold,
    TimeOut,
    Transition,
    deployment_id,
)

T0 = 1_700_000_000.0


def fleet(n_per_sku: int = 10, skus: tuple[str, ...] = ("a", "b", "c")) -> tuple[DeviceView, ...]:
    return tuple(
        DeviceView(f"{s}-{i}", s, model_name="digits", model_sequence=1) for s in skus for i in range(n_per_sku)
    )


def spec(*sizes: str, **gates: object) -> RolloutSpec:
    g = Gates(**gates)  # type: ignore[arg-type]
    return RolloutSpec("digits@2.0.0", 2, tuple(Stage(Threshold.parse(s), g) for s in sizes))


class Sim:
    """Applies the engine's actions the way the runner does, with devices answering as told."""

    def __init__(self, view: RolloutView, outcome: dict[str, D] | None = None) -> None:
        self.view = view
        self.outcome = outcome or {}  # sku -> terminal state; default SUCCEEDED
        self.sent: list[Deploy] = []
        self.rolled_back: list[str] = []

    def step(self, now: float, answer: bool = True) -> list[object]:
        actions = engine.tick(self.view, now)
        deps = dict(self.view.deployments)
        v = self.view
        for a in actions:
            if isinstance(a, Deploy):
                self.sent.append(a)
                deps[a.device] = DeploymentView(a.device, a.deployment_id, D.QUEUED, a.stage, a.attempt, sent_at=now)
            elif isinstance(a, TimeOut):
                deps[a.device] = replace(deps[a.device], state=D.FAILED, reason="timeout", finished_at=now)
            elif isinstance(a, Rollback):
                self.rolled_back.append(a.device)
                deps[a.device] = replace(deps[a.device], rollback_sent=True)
            elif isinstance(a, Transition):
                v = replace(v, state=a.state, stage=a.stage, phase=a.phase, phase_started_at=now)
        if answer:
            sku = {d.id: d.sku for d in v.devices}
            for dev, dep in deps.items():
                if dep.state is D.QUEUED:
                    deps[dev] = replace(dep, state=self.outcome.get(sku[dev], D.SUCCEEDED), finished_at=now)
        self.view = replace(v, deployments=deps)
        return actions

    def run(self, until: float = T0 + 10_000, dt: float = 1.0) -> None:
        now = T0
        while self.view.state is RolloutState.RUNNING and now < until:
            self.step(now)
            now += dt


def view(s: RolloutSpec, devices: tuple[DeviceView, ...] | None = None) -> RolloutView:
    return RolloutView(1, s, RolloutState.RUNNING, 0, Phase.DEPLOYING, T0, devices or fleet(), {})


def test_first_stage_samples_every_sku_and_stages_are_cumulative() -> None:
    v = view(spec("5%", "25%", "100%"))
    assert engine.targets(v) == [3, 8, 30]  # 5% of 30 rounds up to 2, raised to one per sku
    first = engine.tick(v, T0)
    assert sorted({a.device.split("-")[0] for a in first if isinstance(a, Deploy)}) == ["a", "b", "c"]
    sim = Sim(v)
    sim.run()
    assert sim.view.state is RolloutState.SUCCEEDED
    assert len(sim.sent) == 30 == len({d.device for d in sim.sent})  # every device exactly once


def test_counts_as_stage_sizes() -> None:
    assert engine.targets(view(spec("2", "10", "100%"))) == [3, 10, 30]


def test_failures_on_one_sku_trip_the_gate_and_roll_back_every_changed_device() -> None:
    sim = Sim(view(spec("10%", "50%", "100%", failure=Threshold(20.0), retries=0)), {"c": D.ROLLED_BACK})
    sim.run()
    assert sim.view.state is RolloutState.ABORTED
    assert sim.view.stage == 0  # tripped in the first stage: 1 of 3 failed > 20%
    changed = sorted(d for d, dep in sim.view.deployments.items() if dep.state is D.SUCCEEDED)
    assert changed and sorted(sim.rolled_back) == changed
    assert engine.tick(sim.view, T0 + 99) == []  # idempotent: nothing is rolled back twice


def test_a_tick_is_idempotent_on_the_same_view() -> None:
    v = view(spec("25%", "100%"))
    assert engine.tick(v, T0) == engine.tick(v, T0)


def test_bake_time_holds_the_next_stage() -> None:
    sim = Sim(view(spec("10%", "100%", bake_s=60.0)))
    sim.step(T0)
    sim.step(T0 + 1)  # all answered → baking
    assert sim.view.phase is Phase.BAKING
    assert sim.step(T0 + 30) == []
    (t,) = sim.step(T0 + 62)
    assert isinstance(t, Transition) and (t.stage, t.phase) == (1, Phase.DEPLOYING)


def test_timeout_retries_then_counts_as_failure() -> None:
    sim = Sim(view(spec("3", "100%", device_timeout_s=10.0, retries=1, failure=Threshold(1, percent=False))))
    sim.step(T0, answer=False)
    assert sim.step(T0 + 5, answer=False) == []
    acts = sim.step(T0 + 11, answer=False)
    assert sum(isinstance(a, TimeOut) for a in acts) == 3
    retries = [a for a in acts if isinstance(a, Deploy)]
    assert [a.attempt for a in retries] == [2, 2, 2]
    assert {a.deployment_id for a in retries}.isdisjoint({a.deployment_id for a in sim.sent[:3]})
    acts = sim.step(T0 + 22, answer=False)
    assert isinstance(acts[-1], Transition) and acts[-1].state is RolloutState.ABORTED
    assert not any(isinstance(a, Rollback) for a in acts)  # they never reported switching: nothing to undo


def test_max_concurrent_and_rate_limit_new_deployments() -> None:
    v = view(spec("100%", max_concurrent=4))
    assert sum(isinstance(a, Deploy) for a in engine.tick(v, T0)) == 4
    v = view(spec("100%", rate_per_min=5))
    sim = Sim(v)
    sim.step(T0)
    assert len(sim.sent) == 5
    sim.step(T0 + 10)
    assert len(sim.sent) == 5
    sim.step(T0 + 61)
    assert len(sim.sent) == 10


def test_manual_approval_gate_and_operator_commands() -> None:
    sim = Sim(view(spec("10%", "100%", approval=True)))
    sim.run(until=T0 + 10)
    assert sim.view.state is RolloutState.WAITING_APPROVAL
    with pytest.raises(ConflictError):
        engine.command(sim.view, "resume")
    t = engine.command(sim.view, "approve")
    assert (t.state, t.stage, t.phase) == (RolloutState.RUNNING, 1, Phase.DEPLOYING)
    paused = replace(sim.view, state=RolloutState.RUNNING, stage=1, phase=Phase.DEPLOYING)
    assert engine.command(paused, "pause").state is RolloutState.PAUSED
    assert engine.tick(replace(paused, state=RolloutState.PAUSED), T0) == []


def test_one_latest_point_is_not_evidence_for_the_health_gate() -> None:
    """The gate reads telemetry windows over time (tests/test_rollout_evidence.py); a device's latest point
    alone, however slow, neither aborts nor holds the stage."""
    gate = HealthGate(settle_s=2.0)
    point = Health(T0 + 5, error_rate=0.0, lat_p95_ms=10.0, psi_max=0.01, conf_mean=0.9)
    devices = tuple(replace(d, health=replace(point, lat_p95_ms=30.0 if d.id == "b-0" else 10.0)) for d in fleet(4))
    v = RolloutView(
        1, spec("50%", "100%", bake_s=100.0, health=gate), RolloutState.RUNNING, 0, Phase.BAKING, T0, devices, {}
    )
    deps = {
        d.id: DeploymentView(d.id, deployment_id(1, d.id, 1), D.SUCCEEDED, 0, sent_at=T0, finished_at=T0)
        for d in devices
        if d.id.endswith(("-0", "-1"))
    }
    assert engine.tick(replace(v, deployments=deps), T0 + 10) == []  # baking
    acts = engine.tick(replace(v, deployments=deps), T0 + 100)
    assert [(a.state, a.stage) for a in acts if isinstance(a, Transition)] == [(RolloutState.RUNNING, 1)]


def test_devices_already_on_the_release_are_skipped_and_unsent_ones_republished() -> None:
    devices = (*fleet(2), DeviceView("new-0", "a", model_name="digits", model_sequence=2))
    v = view(spec("100%"), devices)
    assert engine.targets(v) == [6]
    dep = DeploymentView("a-0", deployment_id(1, "a-0", 1), D.QUEUED, 0, sent_at=None)
    acts = engine.tick(replace(v, deployments={"a-0": dep}), T0)
    assert Deploy("a-0", dep.deployment_id, 0, 1, new=False) in acts
    assert sum(isinstance(a, Deploy) and a.new for a in acts) == 5


def test_offline_devices_are_not_picked() -> None:
    devices = tuple(replace(d, online=d.sku != "c") for d in fleet(2))
    sim = Sim(view(spec("100%"), devices))
    sim.run()
    assert sim.view.state is RolloutState.SUCCEEDED and len(sim.sent) == 4


@pytest.mark.parametrize("text", ["-1", "101%", "x", "nan"])
def test_bad_thresholds(text: str) -> None:
    with pytest.raises(InvalidRequestError):
        Threshold.parse(text)


def test_selector_parsing_and_spec_round_trip() -> None:
    sel = Selector.parse("sku=b,tag=lab,sku=a")
    assert sel == Selector(("a", "b"), ("lab",)) and sel.matches("a", ["lab", "x"]) and not sel.matches("c", ["lab"])
    with pytest.raises(InvalidRequestError):
        Selector.parse("color=red")
    s = replace(spec("5%", "3", "100%", bake_s=5.0), selector=sel)
    assert RolloutSpec.from_dict(s.to_dict()) == s


def test_deployment_ids_are_protocol_ids() -> None:
    long_id = "x" * 64
    assert deployment_id(7, "cam-1", 1) == "r7-cam-1"
    assert deployment_id(7, "cam-1", 2) == "r7-cam-1-a2"
    assert len(deployment_id(7, long_id, 3)) <= 64


def test_in_flight_deployments_of_an_aborted_rollout_are_rolled_back_once_they_switch() -> None:
    v = view(spec("100%"))
    deps = {
        "a-0": DeploymentView("a-0", "r1-a-0", D.SUCCEEDED, 0, sent_at=T0),
        "a-1": DeploymentView("a-1", "r1-a-1", D.VERIFYING, 0, sent_at=T0),
        "a-2": DeploymentView("a-2", "r1-a-2", D.REJECTED, 0, sent_at=T0),
    }
    aborted = replace(v, state=RolloutState.ABORTED, deployments=deps)
    assert [a.device for a in engine.tick(aborted, T0) if isinstance(a, Rollback)] == ["a-0"]
    deps["a-0"] = replace(deps["a-0"], rollback_sent=True)
    deps["a-1"] = replace(deps["a-1"], state=D.PROBATION)  # it finished installing after the abort
    assert [a.device for a in engine.tick(replace(aborted, deployments=deps), T0 + 1)] == ["a-1"]
