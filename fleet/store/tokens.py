"""API tokens (stored as hashes, never secrets) and fleet-wide settings such as the URL signing key."""

from __future__ import annotations

import secrets

import sqlalchemy as sa

from fleet.access import Role
from fleet.errors import ConflictError, NotFoundError
from fleet.store import audit
from fleet.store import tables as t
from fleet.store.db import Database
from fleet.store.rows import TokenRow

_C = t.tokens.c


class TokenRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str, role: Role, hash_: str, expires_at: float | None, actor: str, now: float) -> TokenRow:
        """Raises: ConflictError (a token of that name exists, even revoked: names stay unique in the audit)."""
        values = {"name": name, "role": role.value, "hash": hash_, "created_at": now, "created_by": actor}
        try:
            with self.db.tx() as conn:
                conn.execute(t.tokens.insert().values(**values, expires_at=expires_at, revoked_at=None))
                audit.record(conn, actor, "token.create", f"token/{name}", f"role {role.value}")
        except sa.exc.IntegrityError:
            raise ConflictError(f"a token named {name!r} exists already") from None
        return self.get(name)

    def get(self, name: str) -> TokenRow:
        """Raises: NotFoundError."""
        rows = self.db.rows(TokenRow, sa.select(t.tokens).where(_C.name == name))
        if not rows:
            raise NotFoundError(f"no token {name[:64]!r}")
        return rows[0]

    def by_hash(self, hash_: str) -> TokenRow | None:
        """The token with this hash (looked up by an index: the hash of a 256-bit secret leaks nothing by timing)."""
        rows = self.db.rows(TokenRow, sa.select(t.tokens).where(_C.hash == hash_))
        return rows[0] if rows else None

    def all(self) -> list[TokenRow]:
        return self.db.rows(TokenRow, sa.select(t.tokens).order_by(_C.name))

    def revoke(self, name: str, actor: str, now: float) -> TokenRow:
        """Revoke at once, for every process on this store. Raises: NotFoundError, ConflictError (already)."""
        with self.db.tx() as conn:
            live = t.tokens.update().where(_C.name == name, _C.revoked_at.is_(None))
            done = conn.execute(live.values(revoked_at=now))
            if done.rowcount != 1:
                self.get(name)  # NotFoundError if there is none
                raise ConflictError(f"token {name!r} is revoked already")
            audit.record(conn, actor, "token.revoke", f"token/{name}")
        return self.get(name)


class SettingsRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get_or_create(self, name: str, make: str) -> str:
        """The setting's value; ``make`` is stored first if it has none (the first process to ask wins)."""
        q = sa.select(t.settings.c.value).where(t.settings.c.name == name)
        for _ in range(2):
            with self.db.tx() as conn:
                row = conn.execute(q).first()
                if row is not None:
                    return str(row.value)
            try:
                with self.db.tx() as conn:
                    conn.execute(t.settings.insert().values(name=name, value=make))
                return make
            except sa.exc.IntegrityError:
                continue  # another process stored it meanwhile: read theirs
        raise ConflictError(f"setting {name} could not be stored")

    def signing_key(self) -> bytes:
        """The fleet's key for signed artifact URLs, created on first use and shared by its processes."""
        return bytes.fromhex(self.get_or_create("url-signing-key", secrets.token_hex(32)))
