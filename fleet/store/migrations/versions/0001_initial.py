"""Initial schema: devices, releases, rollouts, deployments, telemetry rollups, audit log.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("fleet", sa.String(64), nullable=False, index=True),
        sa.Column("sku", sa.String(64)),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("info", sa.JSON),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model_name", sa.String(64)),
        sa.Column("model_version", sa.String(128)),
        sa.Column("model_sequence", sa.BigInteger),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
    )
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("manifest", sa.JSON, nullable=False),
        sa.Column("artifact", sa.String(512), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_releases_name_version"),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("release_id", sa.Integer, sa.ForeignKey("releases.id"), nullable=False),
        sa.Column("release", sa.String(200), nullable=False),
        sa.Column("selector", sa.String(512), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("state", sa.String(32), nullable=False, index=True),
        sa.Column("stage", sa.Integer, nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("phase_started_at", sa.Float, nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
    )
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("rollout_id", sa.Integer, sa.ForeignKey("rollouts.id"), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("deployment_id", sa.String(64), nullable=False, unique=True),
        sa.Column("stage", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("sent_at", sa.Float),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("rollback_sent_at", sa.Float),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", sa.String(1024), nullable=False),
        sa.UniqueConstraint("rollout_id", "device_id", name="uq_deployments_rollout_device"),
    )
    op.create_table(
        "telemetry_rollups",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("minute", sa.BigInteger, primary_key=True),
        sa.Column("points", sa.Integer, nullable=False),
        sa.Column("inferences", sa.Float, nullable=False),
        sa.Column("errors", sa.Float, nullable=False),
        sa.Column("ips_sum", sa.Float, nullable=False),
        sa.Column("lat_p95_sum", sa.Float, nullable=False),
        sa.Column("lat_p95_max", sa.Float, nullable=False),
        sa.Column("conf_sum", sa.Float, nullable=False),
        sa.Column("psi_max", sa.Float, nullable=False),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("detail", sa.String(1024), nullable=False),
    )


def downgrade() -> None:
    for table in ("audit", "telemetry_rollups", "deployments", "rollouts", "releases", "devices"):
        op.drop_table(table)
