"""Table definitions (SQLAlchemy Core). The Alembic migrations in ``migrations/`` create the same schema;
a test checks that a migrated database matches these definitions. Times are epoch seconds (float).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

devices = sa.Table(
    "devices",
    metadata,
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
    sa.Column("admission", sa.String(16), nullable=False, server_default="accepted"),  # or pending, rejected
    sa.Column("tags_version", sa.Integer, nullable=False, server_default="0"),  # compare-and-set of tags
)

releases = sa.Table(
    "releases",
    metadata,
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

rollouts = sa.Table(
    "rollouts",
    metadata,
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

deployments = sa.Table(
    "deployments",
    metadata,
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

telemetry_rollups = sa.Table(
    "telemetry_rollups",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("minute", sa.BigInteger, primary_key=True),  # epoch minute
    sa.Column("points", sa.Integer, nullable=False),
    sa.Column("inferences", sa.Float, nullable=False),
    sa.Column("errors", sa.Float, nullable=False),
    sa.Column("ips_sum", sa.Float, nullable=False),
    sa.Column("lat_p95_sum", sa.Float, nullable=False),
    sa.Column("lat_p95_max", sa.Float, nullable=False),
    sa.Column("conf_sum", sa.Float, nullable=False),
    sa.Column("psi_max", sa.Float, nullable=False),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("detail", sa.String(1024), nullable=False),
    sa.Column("role", sa.String(16), nullable=False, server_default=""),
    sa.Column("token", sa.String(64), nullable=False, server_default=""),  # the token's name, never its secret
    sa.Column("source", sa.String(64), nullable=False, server_default=""),  # client address
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),  # sha256 of the secret
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.Float),
    sa.Column("revoked_at", sa.Float),
)

settings = sa.Table(
    "settings",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)

trust_versions = sa.Table(
    "trust_versions",
    metadata,
    sa.Column("fleet", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("document", sa.Text, nullable=False),  # the canonical trust.json, verified before it is stored
    sa.Column("expires", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
)

capture_policies = sa.Table(
    "capture_policies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("fleet", sa.String(64), nullable=False, index=True),
    sa.Column("selector", sa.String(512), nullable=False),
    sa.Column("model", sa.String(200)),  # NAME or NAME@VERSION; None: any
    sa.Column("rules", sa.JSON, nullable=False),  # low_confidence, drift, random, per_class_max, caps
    sa.Column("until", sa.Float),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("disabled_at", sa.Float),
)

captures = sa.Table(
    "captures",
    metadata,
    sa.Column("fleet", sa.String(64), primary_key=True),
    sa.Column("device", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),  # the device's sample id (ts-seq-random)
    sa.Column("sku", sa.String(64)),
    sa.Column("policy", sa.String(64)),
    sa.Column("model_name", sa.String(64), nullable=False),
    sa.Column("model_version", sa.String(128), nullable=False),
    sa.Column("model_sha256", sa.String(64), nullable=False),
    sa.Column("ts", sa.Float, nullable=False, index=True),  # when the device captured it
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("top1", sa.Integer),
    sa.Column("conf", sa.Float),
    sa.Column("label", sa.String(64)),  # set by an operator (capture label, or a CSV import)
    sa.Column("path", sa.String(1024), nullable=False),  # the sample's .npz under the artifacts directory
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
)
