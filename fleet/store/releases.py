"""Releases: verified bundles the fleet can deploy, one per NAME@VERSION."""

from __future__ import annotations

import time
from dataclasses import asdict

import sqlalchemy as sa

from fleet.errors import ConflictError, NotFoundError
from fleet.store import audit
from fleet.store import tables as t
from fleet.store.db import Database
from fleet.store.rows import NewRelease, ReleaseRow

_C = t.releases.c


class ReleaseRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, release: NewRelease, actor: str) -> ReleaseRow:
        """Record a verified release. Raises: ConflictError if NAME@VERSION exists."""
        name, version = release.name, release.version
        exists = ConflictError(f"release {name}@{version} already exists")
        try:
            with self.db.tx() as conn:
                if conn.execute(sa.select(_C.id).where(_C.name == name, _C.version == version)).first():
                    raise exists
                conn.execute(t.releases.insert().values(**asdict(release), created_at=time.time(), created_by=actor))
                audit.record(conn, actor, "release.add", f"release/{name}@{version}", release.sha256)
        except sa.exc.IntegrityError:  # another request added it between the check and the insert
            raise exists from None
        return self.get(name, version)

    def all(self) -> list[ReleaseRow]:
        """Every release, by name and sequence."""
        return self.db.rows(ReleaseRow, sa.select(t.releases).order_by(_C.name, _C.sequence))

    def get(self, name: str, version: str) -> ReleaseRow:
        """Raises: NotFoundError."""
        rows = self.db.rows(ReleaseRow, sa.select(t.releases).where(_C.name == name, _C.version == version))
        if not rows:
            raise NotFoundError(f"no release {name[:64]}@{version[:64]}")
        return rows[0]

    def by_sha(self, sha256: str) -> ReleaseRow:
        """The release whose bundle has this sha256. Raises: NotFoundError."""
        rows = self.db.rows(ReleaseRow, sa.select(t.releases).where(_C.sha256 == sha256))
        if not rows:
            raise NotFoundError(f"no artifact {sha256[:64]}")
        return rows[0]
