"""The database under every repository: one engine, migrations, and one transaction per thread.

A repository opens ``tx()`` for each change; inside ``batch()`` on the same thread the batch's
transaction is reused, so the ingest commits many messages at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class _FromMapping(Protocol):
    def __init__(self, **values: Any) -> None: ...


R = TypeVar("R", bound=_FromMapping)


def _sqlite_pragmas(dbapi_conn: Any, record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Database:
    """A SQLite file or a PostgreSQL database, migrated on open unless told not to."""

    def __init__(self, url: str, *, migrate_schema: bool = True) -> None:
        if url.startswith("sqlite") and ":memory:" not in url:
            Path(url.split("///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        self._local = threading.local()  # the connection of an open batch() per thread
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        if migrate_schema:
            migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        """One transaction; inside ``batch()`` on the same thread, the batch's transaction."""
        outer: Connection | None = getattr(self._local, "conn", None)
        if outer is not None:
            yield outer
            return
        with self.engine.begin() as conn:
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    def batch(self) -> AbstractContextManager[Connection]:
        """Group the writes of this thread into one transaction (one commit for many ingested messages).

        Anything that fails inside rolls the whole batch back; the caller decides whether to retry parts.
        """
        return self.tx()

    def rows(self, cls: type[R], query: sa.Select[Any]) -> list[R]:
        """The rows of ``query``, each as a ``cls`` built from its columns by name."""
        with self.engine.connect() as conn:
            return [cls(**r._mapping) for r in conn.execute(query)]

    def tuples(self, query: sa.Select[Any]) -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(query)]
