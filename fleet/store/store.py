"""The store: one database and a repository per aggregate; every transition is one transaction.

States are ``str`` enums stored by value. Repositories return frozen rows (``fleet.store.rows``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from sqlalchemy.engine import Connection, Engine

from fleet.store.audit import AuditRepository
from fleet.store.captures import CaptureRepository
from fleet.store.db import Database
from fleet.store.deployments import DeploymentRepository
from fleet.store.devices import DeviceRepository
from fleet.store.leases import LeaseRepository
from fleet.store.releases import ReleaseRepository
from fleet.store.rollouts import RolloutRepository
from fleet.store.telemetry import RollupRepository
from fleet.store.tokens import SettingsRepository, TokenRepository
from fleet.store.trust import TrustRepository


class Store:
    """All persistent state of one fleet manager, opened (and migrated) from a SQLite or PostgreSQL URL."""

    def __init__(self, url: str, *, migrate_schema: bool = True) -> None:
        self.db = Database(url, migrate_schema=migrate_schema)
        self.devices = DeviceRepository(self.db)
        self.releases = ReleaseRepository(self.db)
        self.rollouts = RolloutRepository(self.db)
        self.deployments = DeploymentRepository(self.db)
        self.rollups = RollupRepository(self.db)
        self.leases = LeaseRepository(self.db)
        self.audit = AuditRepository(self.db)
        self.tokens = TokenRepository(self.db)
        self.settings = SettingsRepository(self.db)
        self.trust = TrustRepository(self.db)
        self.captures = CaptureRepository(self.db)

    @classmethod
    def sqlite(cls, path: str | Path) -> Store:
        return cls(f"sqlite:///{Path(path).resolve()}")

    @property
    def url(self) -> str:
        return self.db.url

    @property
    def engine(self) -> Engine:
        return self.db.engine

    def batch(self) -> AbstractContextManager[Connection]:
        """Group the writes of this thread into one transaction (see ``Database.batch``)."""
        return self.db.batch()

    def close(self) -> None:
        self.db.close()
