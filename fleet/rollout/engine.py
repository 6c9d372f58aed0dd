"""The rollout decision core: ``tick(view, now) -> actions``, pure and idempotent (after hawkBit).

A tick reads one rollout's state and its devices and returns what should happen next; a thin runner
applies the actions (one transaction each) and publishes commands. Ticking twice on the same view
returns the same actions, so a crash between ticks loses nothing and repeats nothing.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace

from device_agent.protocol import DeploymentState as D
from fleet.errors import ConflictError
from fleet.rollout import evidence
from fleet.rollout.model import (
    Action,
    Deploy,
    DeploymentView,
    DeviceView,
    Gates,
    Phase,
    Rollback,
    RolloutState,
    RolloutView,
    TimeOut,
    Transition,
    deployment_id,
)

FAILED_FINAL = (D.REJECTED, D.ROLLED_BACK, D.FAILED)


def tick(view: RolloutView, now: float) -> list[Action]:
    """Decide the next actions of one rollout at time ``now`` (seconds since the epoch)."""
    if view.state in (RolloutState.ABORTED, RolloutState.ROLLED_BACK):
        return rollbacks(view, f"rollout {view.id} {view.state.value.lower()}")
    if view.state is not RolloutState.RUNNING:
        return []
    gates = view.spec.stages[view.stage].gates
    actions: list[Action] = [
        Deploy(d.device, d.deployment_id, d.stage, d.attempts, new=False)
        for d in view.deployments.values()
        if d.sent_at is None
    ]
    deployments = dict(view.deployments)
    for dep in view.deployments.values():
        if _timed_out(dep, gates, now):
            actions.append(TimeOut(dep.device, dep.deployment_id))
            deployments[dep.device] = replace(dep, state=D.FAILED, reason="timeout", finished_at=now)
    actions += _retries(view.id, deployments, gates)
    failed = sum(1 for d in deployments.values() if _failed_for_good(d, gates))
    if failed and _trips(gates, failed, len(deployments)):
        return [*actions, *_abort(view, f"failure threshold {gates.failure} tripped: {failed} of {len(deployments)}")]
    if view.phase is Phase.DEPLOYING:
        return actions + _deploying(view, deployments, gates, now)
    return actions + _baking(view, deployments, gates, now)


def _timed_out(dep: DeploymentView, gates: Gates, now: float) -> bool:
    return not dep.state.terminal and dep.sent_at is not None and now - dep.sent_at > gates.device_timeout_s


def _retrying(dep: DeploymentView, gates: Gates) -> bool:
    return dep.state is D.FAILED and dep.attempts <= gates.retries


def _failed_for_good(dep: DeploymentView, gates: Gates) -> bool:
    return dep.state in FAILED_FINAL and not _retrying(dep, gates)


def _retries(rollout_id: int, deployments: dict[str, DeploymentView], gates: Gates) -> list[Action]:
    out: list[Action] = []
    for dep in deployments.values():
        if _retrying(dep, gates):
            attempt = dep.attempts + 1
            out.append(Deploy(dep.device, deployment_id(rollout_id, dep.device, attempt), dep.stage, attempt))
            deployments[dep.device] = replace(dep, state=D.QUEUED, attempts=attempt, sent_at=None)
    return out


def _trips(gates: Gates, failed: int, total: int) -> bool:
    """Counts trip when reached; percentages when exceeded (so ``0%`` trips on the first failure)."""
    if gates.failure.percent:
        return failed * 100 > gates.failure.value * total
    return failed >= max(1, gates.failure.value)


def changed(dep: DeploymentView) -> bool:
    """Whether the device has switched to the release (on probation or committed).

    Only such a device can roll back: an agent answers a rollback during download or install with
    ``no-previous`` and carries on, so in-flight deployments of an aborted rollout are rolled back
    when they report PROBATION or SUCCEEDED (a later tick), and refused or failed ones need nothing.
    """
    return dep.state in (D.PROBATION, D.SUCCEEDED)


def rollbacks(view: RolloutView, reason: str) -> list[Action]:
    return [
        Rollback(d.device, d.deployment_id, reason)
        for d in sorted(view.deployments.values(), key=lambda d: d.device)
        if changed(d) and not d.rollback_sent
    ]


def _abort(view: RolloutView, reason: str) -> list[Action]:
    return [Transition(RolloutState.ABORTED, view.stage, view.phase, reason), *rollbacks(view, reason)]


def targets(view: RolloutView) -> list[int]:
    """Cumulative device counts per stage over the eligible devices; the first covers every sku."""
    eligible = [d for d in view.devices if d.id in view.deployments or not _already_there(view, d)]
    total, skus = len(eligible), len({d.sku for d in eligible})
    out: list[int] = []
    for i, stage in enumerate(view.spec.stages):
        n = max(1, stage.size.of(total)) if total else 0
        if i == 0:
            n = max(n, skus)
        out.append(min(total, max(n, out[-1] if out else 0)))
    return out


def _already_there(view: RolloutView, dev: DeviceView) -> bool:
    return dev.model_name == view.spec.name and (dev.model_sequence or 0) >= view.spec.sequence


def _order_key(rollout_id: int, device: str) -> str:
    return hashlib.sha256(f"{rollout_id}/{device}".encode()).hexdigest()


def pick(view: RolloutView, count: int) -> list[DeviceView]:
    """The next ``count`` online devices without a deployment: first one per sku not yet sampled,
    then a stable pseudo-random order (so stages spread over skus roughly in proportion)."""
    if count <= 0:
        return []
    pool = sorted(
        (d for d in view.devices if d.id not in view.deployments and d.online and not _already_there(view, d)),
        key=lambda d: _order_key(view.id, d.id),
    )
    sampled = {d.sku for d in view.devices if d.id in view.deployments}
    first: list[DeviceView] = []
    for dev in pool:
        if dev.sku not in sampled:
            sampled.add(dev.sku)
            first.append(dev)
    chosen = {d.id for d in first}
    rest = [d for d in pool if d.id not in chosen]
    return (first + rest)[: max(0, count)]


def _budget(deployments: dict[str, DeploymentView], gates: Gates, now: float) -> int:
    inflight = sum(1 for d in deployments.values() if not d.state.terminal)
    budget = gates.max_concurrent - inflight
    if gates.rate_per_min > 0:
        recent = sum(1 for d in deployments.values() if d.sent_at is None or now - d.sent_at < 60.0)
        budget = min(budget, gates.rate_per_min - recent)
    return max(0, budget)


def _deploying(view: RolloutView, deployments: dict[str, DeploymentView], gates: Gates, now: float) -> list[Action]:
    target = targets(view)[view.stage]
    wanted = min(target - len(deployments), _budget(deployments, gates, now))
    new = pick(view, wanted)
    if new:
        return [Deploy(d.id, deployment_id(view.id, d.id, 1), view.stage, 1) for d in new]
    more_possible = len(deployments) < target and bool(pick(view, 1))
    if more_possible or any(not d.state.terminal for d in deployments.values()):
        return []
    succeeded = sum(1 for d in deployments.values() if d.state is D.SUCCEEDED)
    if succeeded < gates.success.of(len(deployments)):
        return _abort(view, f"success threshold {gates.success} not met: {succeeded} of {len(deployments)}")
    return [Transition(RolloutState.RUNNING, view.stage, Phase.BAKING, f"stage {view.stage + 1} deployed")]


def _baking(view: RolloutView, deployments: dict[str, DeploymentView], gates: Gates, now: float) -> list[Action]:
    baked_for = now - view.phase_started_at
    note = ""
    if gates.health is not None:
        verdict = evidence.judge(view.devices, deployments, gates.health, now)
        if verdict.failures:
            return _abort(view, "model health: " + verdict.reason())
        if verdict.pending and baked_for < gates.bake_s + gates.health.max_inconclusive_s:
            return []  # a fail streak under way, or evidence still growing: keep baking (bounded)
        if verdict.pending:
            note = f" (health gate still undecided after {gates.health.max_inconclusive_s:g} s more)"
    if baked_for < gates.bake_s:
        return []
    last = view.stage + 1 >= len(view.spec.stages)
    if last:
        return [Transition(RolloutState.SUCCEEDED, view.stage, Phase.BAKING, "last stage baked" + note)]
    reason = f"stage {view.stage + 1} baked{note}"
    if gates.approval:
        return [Transition(RolloutState.WAITING_APPROVAL, view.stage, Phase.BAKING, reason)]
    return [Transition(RolloutState.RUNNING, view.stage + 1, Phase.DEPLOYING, reason)]


def progress(view: RolloutView) -> dict[str, int]:
    """Deployment counts by state, plus the stage targets' total, for status and metrics."""
    counts = Counter(d.state.value for d in view.deployments.values())
    return {**counts, "targeted": targets(view)[-1] if view.spec.stages else 0}


def command(view: RolloutView, verb: str) -> Transition:
    """An operator's ``pause``, ``resume``, ``abort`` or ``approve`` as a transition.

    Raises:
        ConflictError: the verb does not apply in the rollout's current state.
    """
    state, stage, phase = view.state, view.stage, view.phase
    if verb == "pause" and state is RolloutState.RUNNING:
        return Transition(RolloutState.PAUSED, stage, phase, "paused")
    if verb == "resume" and state is RolloutState.PAUSED:
        return Transition(RolloutState.RUNNING, stage, phase, "resumed")
    if verb == "abort" and state.active:
        return Transition(RolloutState.ABORTED, stage, phase, "aborted by operator")
    if verb == "approve" and state is RolloutState.WAITING_APPROVAL:
        return Transition(RolloutState.RUNNING, stage + 1, Phase.DEPLOYING, f"stage {stage + 2} approved")
    if verb == "rollback" and state in (RolloutState.SUCCEEDED, *[s for s in RolloutState if s.active]):
        return Transition(RolloutState.ROLLED_BACK, stage, phase, "rolled back by operator")
    raise ConflictError(f"cannot {verb} rollout {view.id}: it is {state.value}")
