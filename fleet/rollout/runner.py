"""The thin runner around the pure core: read each live rollout, ``tick()``, apply the actions.

Order per deployment makes a crash harmless: the attempt is recorded (QUEUED, unsent) in one
transaction, then ``cmd/deploy`` is published (QoS 1), then it is marked sent. A crash before the
mark re-publishes the same ``deployment_id``, which a device acts on once; nothing is ever sent
under a new id unless the engine decided on a retry.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from device_agent import protocol as proto
from device_agent.errors import TransportError
from fleet.rollout import engine
from fleet.rollout.model import Action, Deploy, Rollback, RolloutState, TimeOut, Transition
from fleet.service import FleetService

log = logging.getLogger(__name__)
RUNNER = "runner"  # the actor named in the audit log for automatic transitions
LEASE = "rollouts"  # the lease whose holder leads rollouts
LIVE = (RolloutState.RUNNING, RolloutState.ABORTED, RolloutState.ROLLED_BACK)


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, timeout: float = 10.0) -> None:
        """Raises: TransportError."""


def rollback_request_id(deployment_id: str) -> str:
    rid = f"rb-{deployment_id}"
    return rid if len(rid) <= 64 else f"rb-{hashlib.sha256(deployment_id.encode()).hexdigest()[:40]}"


class Runner:
    """Advances every live rollout of one fleet, one ``step()`` at a time."""

    def __init__(
        self,
        service: FleetService,
        publisher: Publisher,
        public_url: str,
        *,
        clock: Callable[[], float] = time.time,
        holder: str = "main",
        lease_ttl: float = 10.0,  # seconds another process waits after this one stops renewing
    ) -> None:
        self.holder = holder
        self.lease_ttl = lease_ttl
        self.leading = False
        self.service = service
        self.store = service.store
        self.publisher = publisher
        self.public_url = public_url.rstrip("/")
        self.clock = clock
        self.sent = 0  # commands published, for metrics

    def step(self) -> int:
        """Tick every live rollout once if this process holds the rollout lease; returns actions applied.

        One process of a fleet leads rollouts; the others take over when its lease expires.
        """
        self.leading = self.store.acquire_lease(LEASE, self.holder, self.clock(), self.lease_ttl)
        if not self.leading:
            return 0
        applied = 0
        for row in self.store.rollouts(states=LIVE):
            try:
                applied += self.advance(row["id"])
            except TransportError as exc:
                log.warning("rollout %s: broker trouble, will retry: %s", row["id"], exc)
        return applied

    def advance(self, rollout_id: int) -> int:
        row, view = self.service.view(rollout_id, finished_without_devices=True)
        actions = engine.tick(view, self.clock())
        release = self.service.release(row["release"]) if any(isinstance(a, Deploy) for a in actions) else {}
        for n, action in enumerate(actions):
            if isinstance(action, Transition):
                if not self.store.transition(rollout_id, row, action, RUNNER, self.clock()):
                    return n  # an operator moved it meanwhile: decide again next step
                row = self.store.rollout(rollout_id)
            else:
                self._apply(rollout_id, action, release)
        return len(actions)

    def _apply(self, rollout_id: int, action: Action, release: dict[str, Any]) -> None:
        now = self.clock()
        if isinstance(action, Deploy):
            if action.new:
                self.store.record_deploy(rollout_id, action, now)
            cmd = proto.DeployCommand(
                request_id=action.deployment_id,
                deployment_id=action.deployment_id,
                url=f"{self.public_url}/artifacts/{release['sha256']}.efb",
                sha256=release["sha256"],
                size=release["size"],
            )
            self._publish(action.device, cmd)
            self.store.mark_sent(action.deployment_id, self.clock())
        elif isinstance(action, TimeOut):
            self.store.mark_timed_out(action.deployment_id, now)
        elif isinstance(action, Rollback):
            cmd_rb = proto.RollbackCommand(
                request_id=rollback_request_id(action.deployment_id),
                deployment_id=action.deployment_id,
                reason=action.reason[:256],
            )
            self._publish(action.device, cmd_rb)
            self.store.mark_rollback_sent(action.deployment_id, self.clock())

    def _publish(self, device: str, cmd: proto.Command) -> None:
        topic = proto.topic(self.service.fleet, device, cmd.kind)
        self.publisher.publish(topic, proto.encode(cmd), qos=1)
        self.sent += 1

    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Step until ``stop`` is set; a failing step is logged and retried, never fatal."""
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # the loop must outlive one bad step (e.g. the database restarting)
                log.exception("rollout step failed; retrying")
            stop.wait(interval)
