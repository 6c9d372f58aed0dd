"""Deployments: one row per (rollout, device), the attempt the device is on and how it went.

An attempt is recorded (QUEUED, unsent) before its command is published and marked sent after; device
events move it on, and only forward (see ``apply_event``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from device_agent.protocol import DeploymentEvent, DeploymentState
from fleet.rollout.model import Deploy, DeploymentView
from fleet.store import tables as t
from fleet.store.db import Database
from fleet.store.rows import DeploymentRow

CHUNK = 500  # ids per IN (...) clause
_C = t.deployments.c
# Statements on the ingest's hot path, built once: thousands of devices send several events each.
_STATE = sa.select(_C.state, _C.reason).where(
    _C.deployment_id == sa.bindparam("_dep"), _C.device_id == sa.bindparam("_dev")
)
_EVENT_COLUMNS = ("state", "reason", "detail", "updated_at", "finished_at")
_APPLY_EVENT = (
    t.deployments.update()
    .where(_C.deployment_id == sa.bindparam("_dep"), _C.state == sa.bindparam("_old"))  # compare-and-set
    .values({k: sa.bindparam(k) for k in _EVENT_COLUMNS})
)
_VIEW_COLUMNS = (
    _C.device_id,
    _C.deployment_id,
    _C.state,
    _C.stage,
    _C.attempts,
    _C.sent_at,
    _C.finished_at,
    _C.reason,
    _C.rollback_sent_at,
)


class DeploymentRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def for_rollout(self, rollout_id: int) -> list[DeploymentRow]:
        """The rollout's deployments, oldest first."""
        q = sa.select(t.deployments).where(_C.rollout_id == rollout_id).order_by(_C.id)
        return self.db.rows(DeploymentRow, q)

    def views(self, rollout_id: int) -> dict[str, DeploymentView]:
        """The rollout's deployments as the decision core sees them, by device."""
        q = sa.select(*_VIEW_COLUMNS).where(_C.rollout_id == rollout_id).order_by(_C.id)
        return {
            dev: DeploymentView(
                dev, dep, DeploymentState(state), stage, attempts, sent, finished, reason, rb is not None
            )
            for dev, dep, state, stage, attempts, sent, finished, reason, rb in self.db.tuples(q)
        }

    def record(self, rollout_id: int, actions: Sequence[Deploy], now: float) -> None:
        """Record new attempts in one transaction: first attempts as one multi-row insert, retries as
        updates of the device's row."""
        first = [a for a in actions if a.attempt <= 1]
        with self.db.tx() as conn:
            if first:
                rows = [
                    {"rollout_id": rollout_id, "device_id": a.device, "created_at": now, **_queued(a, now)}
                    for a in first
                ]
                conn.execute(t.deployments.insert(), rows)
            for a in actions:
                if a.attempt > 1:
                    conn.execute(
                        t.deployments.update()
                        .where(_C.rollout_id == rollout_id, _C.device_id == a.device)
                        .values(**_queued(a, now))
                    )

    def mark_sent(self, deployment_ids: Sequence[str], now: float) -> None:
        self._set_many(deployment_ids, sent_at=now, updated_at=now)

    def mark_rollbacks_sent(self, deployment_ids: Sequence[str], now: float) -> None:
        self._set_many(deployment_ids, rollback_sent_at=now, updated_at=now)

    def _set_many(self, deployment_ids: Sequence[str], **values: Any) -> None:
        with self.db.tx() as conn:
            for i in range(0, len(deployment_ids), CHUNK):
                chunk = list(deployment_ids[i : i + CHUNK])
                conn.execute(t.deployments.update().where(_C.deployment_id.in_(chunk)).values(**values))

    def mark_timed_out(self, deployment_id: str, now: float) -> None:
        """The device did not finish in time: FAILED with reason ``timeout`` (a late success still counts)."""
        values = {"state": DeploymentState.FAILED.value, "reason": "timeout", "finished_at": now, "updated_at": now}
        with self.db.tx() as conn:
            conn.execute(t.deployments.update().where(_C.deployment_id == deployment_id).values(**values))

    def apply_event(self, device: str, event: DeploymentEvent, now: float) -> bool:
        """Apply a device's deployment event; False (nothing changed) for an unknown or stale one.

        A terminal state is left only for ROLLED_BACK (a rollback), or for PROBATION/SUCCEEDED after
        a timeout (the device was slow, not dead). ``FAILED no-previous`` answers a rollback command
        the device could not act on yet; it is not the deployment's outcome.
        """
        with self.db.tx() as conn:
            row = conn.execute(_STATE, {"_dep": event.deployment_id, "_dev": device}).first()
            if row is None:
                return False
            if not _moves(DeploymentState(row.state), row.reason, event):
                return False
            values = {
                "state": event.state.value,
                "reason": event.reason[:64],
                "detail": event.detail[:1024],
                "updated_at": now,
                "finished_at": now if event.state.terminal else None,
            }
            done = conn.execute(_APPLY_EVENT, {"_dep": event.deployment_id, "_old": row.state, **values})
        return done.rowcount == 1  # 0: another process applied an event in between (it is stale now)


def _queued(action: Deploy, now: float) -> dict[str, Any]:
    """A deployment row's columns for a new attempt: QUEUED, not yet sent."""
    return {
        "deployment_id": action.deployment_id,
        "stage": action.stage,
        "state": DeploymentState.QUEUED.value,
        "attempts": action.attempt,
        "sent_at": None,
        "updated_at": now,
        "finished_at": None,
        "reason": "",
        "detail": "",
    }


def _moves(current: DeploymentState, reason: str, event: DeploymentEvent) -> bool:
    if current is event.state or (event.state is DeploymentState.FAILED and event.reason == "no-previous"):
        return False
    if not current.terminal or event.state is DeploymentState.ROLLED_BACK:
        return True
    late = current is DeploymentState.FAILED and reason == "timeout"
    return late and event.state in (DeploymentState.PROBATION, DeploymentState.SUCCEEDED)
