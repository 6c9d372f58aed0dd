"""Capture policies (what operators enabled for which devices) and the index of captured samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from fleet.store import audit
from fleet.store import tables as t
from fleet.store.db import Database
from fleet.store.rows import _Row

_P = t.capture_policies.c
_S = t.captures.c


@dataclass(frozen=True)
class PolicyRow(_Row):
    id: int
    fleet: str
    selector: str
    model: str | None
    rules: dict[str, Any]
    until: float | None
    enabled: bool
    created_at: float
    created_by: str
    disabled_at: float | None


@dataclass(frozen=True)
class CaptureRow(_Row):
    fleet: str
    device: str
    id: str
    sku: str | None
    policy: str | None
    model_name: str
    model_version: str
    model_sha256: str
    ts: float
    reason: str
    score: float
    top1: int | None
    conf: float | None
    label: str | None
    path: str
    size: int
    sha256: str
    received_at: float


@dataclass(frozen=True)
class CaptureQuery:
    """Which samples ``ls``, ``export`` and ``purge`` mean (every field optional)."""

    device: str | None = None
    reason: str | None = None
    model: str | None = None  # NAME or NAME@VERSION
    sku: str | None = None
    since: float | None = None  # capture time, epoch seconds
    before: float | None = None
    labelled: bool | None = None
    limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class CaptureRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- policies --------------------------------------------------------------------------------------

    def enable(
        self,
        fleet: str,
        selector: str,
        model: str | None,
        rules: dict[str, Any],
        until: float | None,
        actor: str,
        now: float,
    ) -> PolicyRow:
        """A new policy (audited); an enabled one for the same selector and model is replaced."""
        with self.db.tx() as conn:
            same = sa.and_(_P.fleet == fleet, _P.selector == selector, _P.enabled.is_(True))
            same = sa.and_(same, _P.model.is_(None) if model is None else _P.model == model)
            conn.execute(t.capture_policies.update().where(same).values(enabled=False, disabled_at=now))
            values = {"fleet": fleet, "selector": selector, "model": model, "rules": rules, "until": until}
            pk = conn.execute(
                t.capture_policies.insert().values(**values, enabled=True, created_at=now, created_by=actor)
            ).inserted_primary_key
            policy_id = int(pk[0]) if pk is not None else 0
            detail = f"selector {selector or '(all)'} model {model or '(any)'} rules {rules}"
            audit.record(conn, actor, "capture.enable", f"capture-policy/{policy_id}", detail)
        return self.db.rows(PolicyRow, sa.select(t.capture_policies).where(_P.id == policy_id))[0]

    def disable(self, fleet: str, selector: str | None, actor: str, now: float) -> list[PolicyRow]:
        """Disable the enabled policies of ``selector`` (None: all); returns them as they were."""
        q = sa.select(t.capture_policies).where(_P.fleet == fleet, _P.enabled.is_(True))
        if selector is not None:
            q = q.where(_P.selector == selector)
        with self.db.tx() as conn:
            rows = [PolicyRow(**r._mapping) for r in conn.execute(q)]
            for row in rows:
                conn.execute(t.capture_policies.update().where(_P.id == row.id).values(enabled=False, disabled_at=now))
                audit.record(conn, actor, "capture.disable", f"capture-policy/{row.id}", f"selector {row.selector}")
        return rows

    def policies(self, fleet: str, *, enabled_only: bool = False) -> list[PolicyRow]:
        q = sa.select(t.capture_policies).where(_P.fleet == fleet).order_by(_P.id)
        return self.db.rows(PolicyRow, q.where(_P.enabled.is_(True)) if enabled_only else q)

    # --- samples ---------------------------------------------------------------------------------------

    def add(self, rows: Sequence[dict[str, Any]], device: str, actor: str) -> tuple[list[str], list[str]]:
        """Index uploaded samples; returns (new ids, ids held already). One audit entry per upload."""
        new, held = [], []
        with self.db.tx() as conn:
            for row in rows:
                key = (_S.fleet == row["fleet"], _S.device == row["device"], _S.id == row["id"])
                if conn.execute(sa.select(_S.id).where(*key)).first() is not None:
                    held.append(row["id"])
                    continue
                conn.execute(t.captures.insert().values(**row))
                new.append(row["id"])
            if new:
                audit.record(conn, actor, "capture.upload", f"device/{device}", f"{len(new)} samples")
        return new, held

    def _where(self, fleet: str, q: CaptureQuery) -> list[Any]:
        cond: list[Any] = [_S.fleet == fleet]
        if q.device:
            cond.append(_S.device == q.device)
        if q.reason:
            cond.append(_S.reason == q.reason)
        if q.sku:
            cond.append(_S.sku == q.sku)
        if q.model:
            name, _, version = q.model.partition("@")
            cond.append(_S.model_name == name)
            if version:
                cond.append(_S.model_version == version)
        if q.since is not None:
            cond.append(_S.ts >= q.since)
        if q.before is not None:
            cond.append(_S.ts < q.before)
        if q.labelled is not None:
            cond.append(_S.label.is_not(None) if q.labelled else _S.label.is_(None))
        return cond

    def find(self, fleet: str, q: CaptureQuery) -> list[CaptureRow]:
        """Oldest first (the order of an export)."""
        sel = sa.select(t.captures).where(*self._where(fleet, q)).order_by(_S.ts, _S.device, _S.id)
        return self.db.rows(CaptureRow, sel.limit(q.limit) if q.limit else sel)

    def page(self, fleet: str, q: CaptureQuery, offset: int, limit: int) -> tuple[list[CaptureRow], int]:
        """Newest first, ``limit`` rows from ``offset`` (paged in SQL, for the console), and how many match."""
        where = self._where(fleet, q)
        total = int(self.db.tuples(sa.select(sa.func.count()).select_from(t.captures).where(*where))[0][0])
        sel = sa.select(t.captures).where(*where).order_by(_S.ts.desc(), _S.device, _S.id)
        return self.db.rows(CaptureRow, sel.offset(offset).limit(limit)), total

    def by_device(self, fleet: str) -> dict[str, int]:
        """Samples held per device."""
        sel = sa.select(_S.device, sa.func.count()).where(_S.fleet == fleet).group_by(_S.device)
        return {str(device): int(n) for device, n in self.db.tuples(sel)}

    def count(self, fleet: str) -> dict[str, Any]:
        sel = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(_S.size), 0)).where(_S.fleet == fleet)
        n, size = self.db.tuples(sel)[0]
        return {"samples": int(n), "bytes": int(size)}

    def label(self, fleet: str, labels: dict[tuple[str, str], str | None], actor: str) -> int:
        """Set (or clear, with None) labels by (device, id); returns how many samples matched."""
        done = 0
        with self.db.tx() as conn:
            for (device, sample), value in labels.items():
                key = (_S.fleet == fleet, _S.device == device, _S.id == sample)
                done += conn.execute(t.captures.update().where(*key).values(label=value)).rowcount
            audit.record(conn, actor, "capture.label", f"capture/{fleet}", f"{done} of {len(labels)} samples")
        return done

    def purge(self, fleet: str, q: CaptureQuery, actor: str, action: str = "capture.purge") -> list[CaptureRow]:
        """Delete the index rows ``q`` selects (audited); returns them so the caller deletes their files."""
        rows = self.find(fleet, q)
        self.delete(fleet, rows, actor, action, f"query {q.to_dict()}")
        return rows

    def delete(self, fleet: str, rows: Sequence[CaptureRow], actor: str, action: str, why: str) -> None:
        """Delete these index rows in one transaction, audited as ``action``."""
        with self.db.tx() as conn:
            for row in rows:
                key = (_S.fleet == fleet, _S.device == row.device, _S.id == row.id)
                conn.execute(t.captures.delete().where(*key))
            audit.record(conn, actor, action, f"capture/{fleet}", f"{len(rows)} samples; {why}")
