"""The fleet manager's store: SQLAlchemy 2 Core tables, Alembic migrations, a repository per aggregate
(devices, releases, rollouts, deployments, telemetry rollups, leases, audit, tokens) returning frozen rows."""

from fleet.store.rows import (
    AuditRow,
    DeploymentRow,
    DeviceBrief,
    DeviceRow,
    NewRelease,
    ReleaseRow,
    RolloutRow,
    RollupRow,
    TokenRow,
)
from fleet.store.store import Store

__all__ = [
    "AuditRow",
    "DeploymentRow",
    "DeviceBrief",
    "DeviceRow",
    "NewRelease",
    "ReleaseRow",
    "RolloutRow",
    "RollupRow",
    "Store",
    "TokenRow",
]
