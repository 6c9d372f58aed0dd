"""The fleet manager's store: SQLAlchemy 2 Core tables, Alembic migrations, one transaction per transition."""

from fleet.store.store import Store

__all__ = ["Store"]
