"""The audit log: who (actor, role, token, address) did what to which target, written in the transaction of
the change itself (or alone, for a refused login)."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from fleet.access import Principal, caller
from fleet.store import tables as t
from fleet.store.db import Database
from fleet.store.rows import AuditRow


def record(conn: Connection, actor: str, action: str, target: str, detail: str = "") -> None:
    """Append one entry inside the caller's transaction; role, token and address come from the API request
    being served (``fleet.access.caller``), empty for the fleet manager's own actions."""
    who = caller.get()
    values = {"role": who.role or "", "token": who.name, "source": who.source[:64]} if who else {}
    conn.execute(
        t.audit.insert().values(
            ts=time.time(), actor=actor[:64], action=action, target=target[:200], detail=detail[:1024], **values
        )
    )


class AuditRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def log(
        self, target: str | None = None, limit: int = 200, *, since: float | None = None, actor: str | None = None
    ) -> list[AuditRow]:
        """The newest ``limit`` entries first: of one target or of all, since a time, by one actor."""
        q = sa.select(t.audit).order_by(t.audit.c.id.desc()).limit(limit)
        if target is not None:
            q = q.where(t.audit.c.target == target)
        if since is not None:
            q = q.where(t.audit.c.ts >= since)
        if actor is not None:
            q = q.where(t.audit.c.actor == actor)
        return self.db.rows(AuditRow, q)

    def refused(self, who: Principal, action: str, target: str, reason: str) -> None:
        """Record a refused call (bad token, wrong role, bad signature) in a transaction of its own."""
        token = caller.set(who)
        try:
            with self.db.tx() as conn:
                record(conn, who.name, action, target, reason)
        finally:
            caller.reset(token)
