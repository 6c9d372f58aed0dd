"""Leases: which process of a fleet leads rollouts; the others take over when it stops renewing."""

from __future__ import annotations

import sqlalchemy as sa

from fleet.store import tables as t
from fleet.store.db import Database


class LeaseRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def acquire(self, name: str, holder: str, now: float, ttl: float) -> bool:
        """Take or renew lease ``name`` for ``holder`` until ``now + ttl``; False while another holds it."""
        c = t.leases.c
        with self.db.tx() as conn:
            taken = conn.execute(
                t.leases.update()
                .where(c.name == name, sa.or_(c.holder == holder, c.expires_at < now))
                .values(holder=holder, expires_at=now + ttl)
            )
            if taken.rowcount == 1:
                return True
            if conn.execute(sa.select(c.holder).where(c.name == name)).first() is not None:
                return False
        try:
            with self.db.tx() as conn:
                conn.execute(t.leases.insert().values(name=name, holder=holder, expires_at=now + ttl))
        except sa.exc.IntegrityError:  # another process inserted it first
            return False
        return True

    def holder(self, name: str, now: float) -> str | None:
        """Who holds lease ``name`` at ``now``; None when nobody does."""
        c = t.leases.c
        rows = self.db.tuples(sa.select(c.holder).where(c.name == name, c.expires_at >= now))
        return str(rows[0][0]) if rows else None

    def live(self, prefix: str, now: float) -> list[tuple[str, str]]:
        """(name, holder) of every lease whose name starts with ``prefix`` and that has not expired at ``now``."""
        c = t.leases.c
        query = sa.select(c.name, c.holder).where(c.name.startswith(prefix, autoescape=True), c.expires_at >= now)
        return sorted((str(name), str(holder)) for name, holder in self.db.tuples(query.order_by(c.name)))
