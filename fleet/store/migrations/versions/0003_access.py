"""Access control: API tokens (hashed), a settings table (the download-URL signing key), device
admission and a tags version (compare-and-set tag changes), and who/how on every audit entry.

Revision ID: 0003_access
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_access"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Float),
        sa.Column("revoked_at", sa.Float),
    )
    op.create_table(
        "settings",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
    )
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("admission", sa.String(16), nullable=False, server_default="accepted"))
        batch.add_column(sa.Column("tags_version", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("audit") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default=""))
        batch.add_column(sa.Column("token", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("source", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("audit") as batch:
        for column in ("source", "token", "role"):
            batch.drop_column(column)
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("tags_version")
        batch.drop_column("admission")
    op.drop_table("settings")
    op.drop_table("tokens")
