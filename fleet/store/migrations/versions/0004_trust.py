"""Trust versions: the signed trust metadata of each fleet, every version kept so devices can walk the chain.

Revision ID: 0004_trust
Revises: 0003_access
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_trust"
down_revision = "0003_access"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trust_versions",
        sa.Column("fleet", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("trust_versions")
