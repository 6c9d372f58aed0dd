"""Alembic environment: the store passes an open connection; migrations never read a config file."""

from __future__ import annotations

from alembic import context

from fleet.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
