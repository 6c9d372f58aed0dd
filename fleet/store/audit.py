"""The audit log: who did what to which target, written in the transaction of the change itself."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from fleet.store import tables as t
from fleet.store.db import Database
from fleet.store.rows import AuditRow


def record(conn: Connection, actor: str, action: str, target: str, detail: str = "") -> None:
    """Append one entry inside the caller's transaction."""
    conn.execute(
        t.audit.insert().values(ts=time.time(), actor=actor, action=action, target=target, detail=detail[:1024])
    )


class AuditRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def log(self, target: str | None = None, limit: int = 200) -> list[AuditRow]:
        """The newest ``limit`` entries first, of one target or of all."""
        q = sa.select(t.audit).order_by(t.audit.c.id.desc()).limit(limit)
        if target is not None:
            q = q.where(t.audit.c.target == target)
        return self.db.rows(AuditRow, q)
