"""Telemetry rollups: per device and minute, sums add up and maxima take the max."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from fleet.store import tables as t
from fleet.store.db import Database
from fleet.store.rows import RollupRow

CHUNK = 500  # ids per IN (...) clause
RETRIES = 3
TRANSIENT_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock detected (PostgreSQL)
_C = t.telemetry_rollups.c


def _larger(column: sa.Column[float], name: str) -> sa.Case[float]:
    return sa.case((column > sa.bindparam(name), column), else_=sa.bindparam(name))


_MERGE = (
    t.telemetry_rollups.update()
    .where(_C.device_id == sa.bindparam("_device_id"), _C.minute == sa.bindparam("_minute"))
    .values(
        points=_C.points + sa.bindparam("_points"),
        inferences=_C.inferences + sa.bindparam("_inferences"),
        errors=_C.errors + sa.bindparam("_errors"),
        ips_sum=_C.ips_sum + sa.bindparam("_ips_sum"),
        lat_p95_sum=_C.lat_p95_sum + sa.bindparam("_lat_p95_sum"),
        lat_p95_max=_larger(_C.lat_p95_max, "_lat_p95_max"),
        conf_sum=_C.conf_sum + sa.bindparam("_conf_sum"),
        psi_max=_larger(_C.psi_max, "_psi_max"),
    )
)


def _transient(exc: sa.exc.DBAPIError) -> bool:
    """An insert race or a deadlock: retrying the whole transaction succeeds."""
    return isinstance(exc, sa.exc.IntegrityError) or getattr(exc.orig, "sqlstate", None) in TRANSIENT_SQLSTATES


class RollupRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, rollups: Sequence[RollupRow]) -> None:
        """Merge per-minute rollups into the store (sums add up, maxima take the max).

        Several ingest processes (or two flushes of one) may write the same (device, minute) at once. Rows
        are written in (device, minute) order, so concurrent writers queue on a row instead of deadlocking; a
        loser of an insert race, or of a deadlock the database broke anyway, retries its whole (rolled back)
        transaction and then finds the row to add to.
        """
        for attempt in range(RETRIES):
            try:
                self._add(rollups)
                return
            except sa.exc.DBAPIError as exc:
                if attempt == RETRIES - 1 or not _transient(exc):
                    raise

    def _add(self, rollups: Sequence[RollupRow]) -> None:
        """Rows that exist are updated and new ones inserted, each kind as one executemany."""
        if not rollups:
            return
        with self.db.tx() as conn:
            existing: set[tuple[str, int]] = set()
            minutes = sorted({r.minute for r in rollups})
            devices = sorted({r.device_id for r in rollups})
            for i in range(0, len(devices), CHUNK):
                chunk = devices[i : i + CHUNK]
                q = sa.select(_C.device_id, _C.minute).where(_C.device_id.in_(chunk), _C.minute.in_(minutes))
                existing.update((d, m) for d, m in conn.execute(q))
            ordered = sorted(rollups, key=lambda r: (r.device_id, r.minute))  # one lock order for every writer
            old = [r for r in ordered if (r.device_id, r.minute) in existing]
            new = [r for r in ordered if (r.device_id, r.minute) not in existing]
            if old:
                conn.execute(_MERGE, [{f"_{k}": v for k, v in r.to_dict().items()} for r in old])
            if new:
                conn.execute(t.telemetry_rollups.insert(), [r.to_dict() for r in new])

    def for_device(self, device: str) -> list[RollupRow]:
        """The device's rollups, oldest minute first."""
        q = sa.select(t.telemetry_rollups).where(_C.device_id == device).order_by(_C.minute)
        return self.db.rows(RollupRow, q)
