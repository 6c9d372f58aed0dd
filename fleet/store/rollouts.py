"""Rollouts: one row per rollout; every transition is a compare-and-set on (state, stage, phase), so an
operator's pause can never be overwritten by a tick computed just before it."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from fleet.errors import NotFoundError
from fleet.rollout.model import Phase, RolloutSpec, RolloutState, Transition
from fleet.store import audit
from fleet.store import tables as t
from fleet.store.db import Database
from fleet.store.rows import ReleaseRow, RolloutRow

_C = t.rollouts.c


class RolloutRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, release: ReleaseRow, spec: RolloutSpec, actor: str, now: float) -> int:
        """Record a new RUNNING rollout at its first stage; returns its id."""
        with self.db.tx() as conn:
            key = conn.execute(
                t.rollouts.insert().values(
                    release_id=release.id,
                    release=spec.release,
                    selector=str(spec.selector),
                    spec=spec.to_dict(),
                    state=RolloutState.RUNNING.value,
                    stage=0,
                    phase=Phase.DEPLOYING.value,
                    phase_started_at=now,
                    reason="started",
                    created_at=now,
                    updated_at=now,
                    created_by=actor,
                )
            ).inserted_primary_key
            rid = int(key[0]) if key else 0
            audit.record(conn, actor, "rollout.start", f"rollout/{rid}", f"{spec.release} stages {len(spec.stages)}")
        return rid

    def get(self, rollout_id: int) -> RolloutRow:
        """Raises: NotFoundError."""
        rows = self.db.rows(RolloutRow, sa.select(t.rollouts).where(_C.id == rollout_id))
        if not rows:
            raise NotFoundError(f"no rollout {rollout_id}")
        return rows[0]

    def find(self, *, states: Sequence[RolloutState] | None = None, release: str | None = None) -> list[RolloutRow]:
        """Rollouts by id, optionally only those in ``states`` or of one NAME@VERSION."""
        q = sa.select(t.rollouts).order_by(_C.id)
        if states is not None:
            q = q.where(_C.state.in_([s.value for s in states]))
        if release is not None:
            q = q.where(_C.release == release)
        return self.db.rows(RolloutRow, q)

    def transition(self, rollout_id: int, expect: RolloutRow, to: Transition, actor: str, now: float) -> bool:
        """Compare-and-set the rollout's (state, stage, phase) and audit it; False if it changed meanwhile."""
        moved = (to.stage, to.phase.value) != (expect.stage, expect.phase)
        with self.db.tx() as conn:
            result = conn.execute(
                t.rollouts.update()
                .where(_C.id == rollout_id, _C.state == expect.state, _C.stage == expect.stage)
                .where(_C.phase == expect.phase)
                .values(
                    state=to.state.value,
                    stage=to.stage,
                    phase=to.phase.value,
                    phase_started_at=now if moved else expect.phase_started_at,
                    reason=to.reason[:1024],
                    updated_at=now,
                )
            )
            if result.rowcount != 1:
                return False
            before = f"{expect.state}/{expect.stage + 1}/{expect.phase}"
            after = f"{to.state.value}/{to.stage + 1}/{to.phase.value}"
            audit.record(conn, actor, "rollout.transition", f"rollout/{rollout_id}", f"{before} → {after}: {to.reason}")
        return True
