"""Trust versions: every version of a fleet's signed trust metadata (verified before it gets here)."""

from __future__ import annotations

import time

import sqlalchemy as sa

from fleet.errors import ConflictError
from fleet.store import audit
from fleet.store import tables as t
from fleet.store.db import Database
from fleet.store.rows import TrustVersionRow

_C = t.trust_versions.c


class TrustRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, fleet: str, version: int, document: bytes, expires: float, actor: str) -> bool:
        """Record a verified version (audited); False if this exact version is stored already.

        Raises:
            ConflictError: another document is stored under this version.
        """
        text = document.decode()
        with self.db.tx() as conn:
            row = conn.execute(sa.select(_C.document).where(_C.fleet == fleet, _C.version == version)).first()
            if row is not None:
                if row[0] != text:
                    raise ConflictError(f"trust version {version} is stored already with other content")
                return False
            values = {"document": text, "expires": expires, "created_at": time.time(), "created_by": actor}
            conn.execute(t.trust_versions.insert().values(fleet=fleet, version=version, **values))
            audit.record(conn, actor, "trust.push", f"trust/{fleet}", f"version {version}")
        return True

    def chain(self, fleet: str, limit: int) -> list[TrustVersionRow]:
        """The newest ``limit`` versions, oldest first."""
        q = sa.select(t.trust_versions).where(_C.fleet == fleet).order_by(_C.version.desc()).limit(limit)
        return list(reversed(self.db.rows(TrustVersionRow, q)))
