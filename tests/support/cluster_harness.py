"""Several real ``fleetctl serve`` processes on one PostgreSQL database and a clustered broker.

``pg_database()`` makes a database of its own in the machine's PostgreSQL (shared with other test runs)
and drops it afterwards. ``Managers`` starts N ``fleetctl serve`` processes on it, one after another
(the first one migrates the schema), each with its own port and ``--instance`` and all with the same
``--artifacts`` directory (shared storage, as several hosts would mount it).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet.broker import free_port
from fleet.client import ApiClient
from fleet.errors import ApiError
from tests.support.fleet_harness import TOKEN, wait_until
from tests.support.processes import BIN, kill9, terminate

PG_SERVER = os.environ.get("EDGEFLEET_TEST_PG_SERVER", "postgresql+psycopg://postgres@127.0.0.1:5432")
LEASE_TTL = 5.0  # seconds: --lease-ttl of every manager in these tests


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh database ``ef_cluster_…`` (skipped with the reason when PostgreSQL is unreachable); dropped after."""
    import sqlalchemy as sa

    name = f"ef_cluster_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        if os.environ.get("EDGEFLEET_CI") == "1":
            raise
        pytest.skip(f"PostgreSQL unreachable at {PG_SERVER}: {str(exc).splitlines()[0]}")
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@dataclass
class Manager:
    instance: str
    args: list[str]
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def holder(self) -> str:
        return f"default/{self.instance}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with self.log.open("ab") as out:  # the environment (PYTHONPATH included) passes through
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=out)
        wait_until(self._up, 60, f"fleetctl serve {self.instance} to answer (log: {self.log})")

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"fleetctl serve {self.instance} exited: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def health(self) -> dict[str, Any] | None:
        try:
            return ApiClient(self.url, TOKEN).get("/health")  # type: ignore[no-any-return]
        except (ApiError, httpx.HTTPError):
            return None

    def kill9(self) -> None:
        assert self.proc is not None
        kill9(self.proc)

    def stop(self) -> None:
        """Warm stop (SIGTERM): the ingest flushes its rollups before the process exits."""
        if self.proc is not None:
            terminate(self.proc, 30)


@dataclass
class Managers:
    members: list[Manager] = field(default_factory=list)

    def alive(self) -> list[Manager]:
        return [m for m in self.members if m.alive]

    def api(self) -> ApiClient:
        """A client of a living manager (any one: they share the store)."""
        return ApiClient(self.alive()[0].url, TOKEN)

    def leader(self) -> Manager | None:
        """The manager named as rollout leader by the living ones (None while nobody holds the lease)."""
        for manager in self.alive():
            health = manager.health()
            if health is not None:
                holder = health.get("rollout_leader")
                return next((m for m in self.members if m.holder == holder), None)
        return None

    def stop(self) -> None:
        for manager in self.members:
            manager.stop()


def _token_file(tmp: Path) -> Path:
    path = tmp / "bootstrap.token"  # the secret in a file, not on a command line (ps)
    path.write_text(f"alice={TOKEN}\n")
    path.chmod(0o600)
    return path


@contextmanager
def managers(tmp: Path, db: str, broker: str, pub: Path, count: int = 3) -> Iterator[Managers]:
    """``count`` ``fleetctl serve`` processes (m1, m2, …) on ``db`` and ``broker``; stopped afterwards.
    m2 reads telemetry with ``--ingest-stream lean``, the others with paho."""
    token_file, group = _token_file(tmp), Managers()
    for i in range(1, count + 1):
        port = free_port()
        args = [str(BIN / "fleetctl"), "serve", "--db", db, "--broker", broker, "--broker-protocol", "3.1.1"]
        args += ["--lease-ttl", str(LEASE_TTL), "--instance", f"m{i}", "--artifacts", str(tmp / "artifacts")]
        args += ["--listen", f"127.0.0.1:{port}", "--trust", str(pub), "--token-file", str(token_file)]
        args += ["--ingest-stream", "lean" if i == 2 else "paho"]  # m2 reads telemetry with the lean reader
        group.members.append(Manager(f"m{i}", args, port, tmp / f"serve-m{i}.log"))
    try:
        for manager in group.members:
            manager.start()
        wait_until(lambda: all(_members(m) == count for m in group.members), 60, "every manager to see the others")
        yield group
    finally:
        group.stop()


def _members(manager: Manager) -> int:
    """How many members a manager's log says the partition has (the last such line)."""
    lines = [line for line in manager.log.read_text(errors="replace").splitlines() if "ingest partition:" in line]
    return int(lines[-1].split("ingest partition: ", 1)[1].split(" ", 1)[0]) if lines else 0


def stored_points(db: str) -> dict[str, int]:
    """Telemetry points stored per device: the sum of the per-minute rollups' point counts."""
    import sqlalchemy as sa

    engine = sa.create_engine(db)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT device_id, SUM(points) FROM telemetry_rollups GROUP BY device_id"))
            return {str(device): int(points) for device, points in rows}
    finally:
        engine.dispose()


def timed(predicate: Any, timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` held (polled every 50 ms; ``timeout`` is a hang guard)."""
    start = time.monotonic()
    wait_until(predicate, timeout, what)
    return time.monotonic() - start
