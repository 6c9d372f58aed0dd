"""Field data capture: the operators' capture policies and the index of captured samples (the samples
themselves are files under the artifacts directory).

Revision ID: 0005_capture
Revises: 0004_trust
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_capture"
down_revision = "0004_trust"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "capture_policies",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("fleet", sa.String(64), nullable=False, index=True),
        sa.Column("selector", sa.String(512), nullable=False),
        sa.Column("model", sa.String(200)),
        sa.Column("rules", sa.JSON, nullable=False),
        sa.Column("until", sa.Float),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("disabled_at", sa.Float),
    )
    op.create_table(
        "captures",
        sa.Column("fleet", sa.String(64), primary_key=True),
        sa.Column("device", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("sku", sa.String(64)),
        sa.Column("policy", sa.String(64)),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("ts", sa.Float, nullable=False, index=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("top1", sa.Integer),
        sa.Column("conf", sa.Float),
        sa.Column("label", sa.String(64)),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("captures")
    op.drop_table("capture_policies")
