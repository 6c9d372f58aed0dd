"""The thin runner around the pure core: read each live rollout, ``tick()``, apply the actions.

Order per deployment makes a crash harmless: the attempt is recorded (QUEUED, unsent) in one
transaction, then ``cmd/deploy`` is published (QoS 1), then it is marked sent. A crash before the
mark re-publishes the same ``deployment_id``, which a device acts on once; nothing is ever sent
under a new id unless the engine decided on a retry.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from device_agent import protocol as proto
from device_agent.errors import TransportError
from fleet.access import UrlSigner
from fleet.rollout import engine
from fleet.rollout.model import Deploy, Rollback, TimeOut, Transition
from fleet.service import FleetService
from fleet.store import ReleaseRow

log = logging.getLogger(__name__)
RUNNER = "runner"  # the actor named in the audit log for automatic transitions


class Publisher(Protocol):
    def publish_many(self, messages: Iterable[tuple[str, bytes]], qos: int = 1, timeout: float = 30.0) -> None:
        """Publish all, return when the broker has acknowledged all. Raises: TransportError."""


def rollback_request_id(deployment_id: str) -> str:
    rid = f"rb-{deployment_id}"
    return rid if len(rid) <= 64 else f"rb-{hashlib.sha256(deployment_id.encode()).hexdigest()[:40]}"


def _deploy_command(deployment_id: str, url: str, release: ReleaseRow) -> proto.DeployCommand:
    return proto.DeployCommand(
        request_id=deployment_id, deployment_id=deployment_id, url=url, sha256=release.sha256, size=release.size
    )


def _rollback_command(action: Rollback) -> proto.RollbackCommand:
    request_id = rollback_request_id(action.deployment_id)
    return proto.RollbackCommand(request_id=request_id, deployment_id=action.deployment_id, reason=action.reason[:256])


class Runner:
    """Advances every live rollout of one fleet, one ``step()`` at a time, through the service."""

    def __init__(
        self,
        service: FleetService,
        publisher: Publisher,
        public_url: str,
        *,
        clock: Callable[[], float] = time.time,
        holder: str = "main",
        lease_ttl: float = 10.0,  # seconds another process waits after this one stops renewing
        signer: UrlSigner | None = None,  # signs each device's artifact URL (None: plain URLs, for tests)
    ) -> None:
        self.signer = signer
        self.holder = holder
        self.lease_ttl = lease_ttl
        self.leading = False
        self.service = service
        self.publisher = publisher
        self.public_url = public_url.rstrip("/")
        self.clock = clock
        self.sent = 0  # commands published, for metrics
        self.transitions = 0  # rollout transitions applied

    def step(self) -> int:
        """Tick every live rollout once if this process holds the rollout lease; returns actions applied.

        One process of a fleet leads rollouts; the others take over when its lease expires.
        """
        self.leading = self.service.lead_rollouts(self.holder, self.clock(), self.lease_ttl)
        if not self.leading:
            return 0
        applied = 0
        for row in self.service.live_rollouts():
            try:
                applied += self.advance(row.id)
            except TransportError as exc:
                log.warning("rollout %s: broker trouble, will retry: %s", row.id, exc)
        return applied

    def advance(self, rollout_id: int) -> int:
        """Tick one rollout and apply its actions in order; consecutive deploys (or rollbacks) go as one
        batch: recorded in one transaction, published together, marked sent in one transaction."""
        row, view = self.service.view(rollout_id, finished_without_devices=True)
        actions = engine.tick(view, self.clock())
        deploys = any(isinstance(a, Deploy) for a in actions)
        release = self.service.release(row.release) if deploys else None  # read once, before anything changes
        done = 0
        for kind, group in itertools.groupby(actions, key=type):
            batch = list(group)
            if kind is Transition:
                for action in batch:
                    assert isinstance(action, Transition)
                    moved = self.service.transition(row, action, RUNNER, self.clock())
                    if moved is None:
                        return done  # an operator moved it meanwhile: decide again next step
                    row = moved
                    done += 1
                    self.transitions += 1
                continue
            if kind is Deploy and release is not None:
                self._deploy([a for a in batch if isinstance(a, Deploy)], rollout_id, release)
            elif kind is Rollback:
                self._rollback([a for a in batch if isinstance(a, Rollback)])
            else:
                for action in batch:
                    if isinstance(action, TimeOut):
                        self.service.time_out(action.deployment_id, self.clock())
            done += len(batch)
        return done

    def _deploy(self, deploys: list[Deploy], rollout_id: int, release: ReleaseRow) -> None:
        self.service.record_deploys(rollout_id, [d for d in deploys if d.new], self.clock())
        url = f"{self.public_url}/artifacts/{release.sha256}.efb"
        now = self.clock()
        commands = [
            (d.device, _deploy_command(d.deployment_id, self._signed(url, d, release, now), release)) for d in deploys
        ]
        self._publish(commands)
        self.service.mark_deploys_sent([d.deployment_id for d in deploys], self.clock())

    def _signed(self, url: str, deploy: Deploy, release: ReleaseRow, now: float) -> str:
        """The artifact URL for one device and deployment (devices resume with Range on the same URL)."""
        if self.signer is None:
            return url
        return f"{url}?{self.signer.query(release.sha256, deploy.deployment_id, deploy.device, now)}"

    def _rollback(self, rollbacks: list[Rollback]) -> None:
        commands = [(r.device, _rollback_command(r)) for r in rollbacks]
        self._publish(commands)
        self.service.mark_rollbacks_sent([r.deployment_id for r in rollbacks], self.clock())

    def _publish(self, commands: Sequence[tuple[str, proto.Command]]) -> None:
        messages = [(proto.topic(self.service.fleet, device, cmd.kind), proto.encode(cmd)) for device, cmd in commands]
        self.publisher.publish_many(messages, qos=1, timeout=30.0 + len(messages) / 100)
        self.sent += len(messages)

    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Step until ``stop`` is set; a failing step is logged and retried, never fatal.

        A step that moved a rollout (e.g. a stage deployed → baking → next stage) is followed at once by
        another, so a zero-bake rollout does not wait ``interval`` at every transition.
        """
        while not stop.is_set():
            before = self.transitions
            try:
                self.step()
            except Exception:  # the loop must outlive one bad step (e.g. the database restarting)
                log.exception("rollout step failed; retrying")
            if self.transitions == before:
                stop.wait(interval)
