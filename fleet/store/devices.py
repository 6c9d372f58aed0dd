"""Devices: registered as they first speak (accepted, or pending admission), updated from their status,
info and telemetry, tagged by operators."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from device_agent.protocol import Info
from fleet.errors import NotFoundError
from fleet.store import audit
from fleet.store import tables as t
from fleet.store.db import Database
from fleet.store.rows import DeviceBrief, DeviceRow

# Statements on the ingest's hot path, built once: thousands of devices send several messages each.
_D = t.devices.c
_DEVICE_EXISTS = sa.select(_D.id).where(_D.id == sa.bindparam("_id"))
_SET_STATUS = t.devices.update().where(_D.id == sa.bindparam("_id"))
_SET_STATUS_LAST_SEEN = _SET_STATUS.values(status=sa.bindparam("status"), last_seen=sa.bindparam("last_seen"))
_TOUCH = _SET_STATUS.values(last_seen=sa.bindparam("last_seen"))
_INFO_COLUMNS = ("sku", "info", "model_name", "model_version", "model_sequence", "last_seen")
_SET_INFO = _SET_STATUS.values({k: sa.bindparam(k) for k in _INFO_COLUMNS})
CHUNK = 500  # ids per IN (...) clause


class DeviceRepository:
    """``admission`` is what a device that speaks for the first time becomes (``accepted``, or ``pending``
    under ``serve --admission manual``); ``max_devices`` caps how many a fleet registers (None: no cap)."""

    def __init__(self, db: Database, admission: str = "accepted", max_devices: int | None = None) -> None:
        self.db = db
        self.admission = admission
        self.max_devices = max_devices
        self.over_cap = 0  # first messages of devices not registered because the fleet was full

    def _ensure(self, conn: Connection, fleet: str, device: str, now: float) -> None:
        if conn.execute(_DEVICE_EXISTS, {"_id": device}).first() is not None:
            return
        if self.max_devices is not None:
            count = conn.execute(sa.select(sa.func.count()).select_from(t.devices).where(_D.fleet == fleet)).scalar()
            if (count or 0) >= self.max_devices:
                self.over_cap += 1
                return
        conn.execute(
            t.devices.insert().values(
                id=device,
                fleet=fleet,
                tags=[],
                status="unknown",
                first_seen=now,
                last_seen=now,
                admission=self.admission,
                tags_version=0,
            )
        )

    def record_info(self, fleet: str, device: str, info: Info, now: float) -> None:
        """Register the device if new and store its latest info (model, hardware)."""
        model = info.model
        values: dict[str, Any] = {
            "sku": info.sku,
            "info": info.to_dict(),
            "model_name": model.name if model else None,
            "model_version": model.version if model else None,
            "model_sequence": model.sequence if model else None,
            "last_seen": now,
        }
        with self.db.tx() as conn:
            self._ensure(conn, fleet, device, now)
            conn.execute(_SET_INFO, {"_id": device, **values})

    def record_status(self, fleet: str, device: str, status: str, now: float) -> None:
        with self.db.tx() as conn:
            self._ensure(conn, fleet, device, now)
            conn.execute(_SET_STATUS_LAST_SEEN, {"_id": device, "status": status, "last_seen": now})

    def touch(self, fleet: str, last_seen: dict[str, float]) -> None:
        """Update last-seen times, registering devices seen for the first time (one transaction)."""
        if not last_seen:
            return
        with self.db.tx() as conn:
            known: set[str] = set()
            ids = sorted(last_seen)
            for i in range(0, len(ids), CHUNK):
                known.update(d for (d,) in conn.execute(sa.select(_D.id).where(_D.id.in_(ids[i : i + CHUNK]))))
            if known:
                conn.execute(_TOUCH, [{"_id": d, "last_seen": last_seen[d]} for d in sorted(known)])  # lock order
            for device in sorted(set(ids) - known):
                self._ensure(conn, fleet, device, last_seen[device])

    def all(self, fleet: str | None = None, admission: str | None = None) -> list[DeviceRow]:
        """Every device (of one fleet, or of all; of one admission state, or of all), by id."""
        q = sa.select(t.devices).order_by(_D.id)
        if fleet is not None:
            q = q.where(_D.fleet == fleet)
        if admission is not None:
            q = q.where(_D.admission == admission)
        return self.db.rows(DeviceRow, q)

    def briefs(self, fleet: str, *, tags: bool = True) -> list[DeviceBrief]:
        """What a rollout decides on, per accepted device of ``fleet`` (pending and rejected ones are never
        targeted): without the ``info`` document (and without
        tags unless asked: JSON decoding 10,000 of them costs)."""
        tag_col = _D.tags if tags else sa.null()
        q = sa.select(_D.id, _D.sku, _D.status, _D.model_name, _D.model_sequence, tag_col)
        q = q.where(_D.fleet == fleet, _D.admission == "accepted")
        return [DeviceBrief(*r) for r in self.db.tuples(q.order_by(_D.id))]

    def get(self, device: str) -> DeviceRow:
        """Raises: NotFoundError."""
        rows = self.db.rows(DeviceRow, sa.select(t.devices).where(_D.id == device))
        if not rows:
            raise NotFoundError(f"no device {device[:64]!r}")
        return rows[0]

    def tag(self, device: str, add: Sequence[str], remove: Sequence[str], actor: str) -> list[str]:
        """Add and remove tags; returns the device's tags. A compare-and-set on ``tags_version``, retried when
        another writer changed the tags meanwhile, so concurrent changes never undo each other.

        Raises: NotFoundError for an unknown device.
        """
        while True:
            with self.db.tx() as conn:
                row = conn.execute(sa.select(_D.tags, _D.tags_version).where(_D.id == device)).first()
                if row is None:
                    raise NotFoundError(f"no device {device[:64]!r}")
                tags = sorted((set(row.tags or []) | set(add)) - set(remove))
                done = conn.execute(
                    t.devices.update()
                    .where(_D.id == device, _D.tags_version == row.tags_version)
                    .values(tags=tags, tags_version=row.tags_version + 1)
                )
                if done.rowcount == 1:
                    audit.record(conn, actor, "device.tag", f"device/{device}", f"+{list(add)} -{list(remove)}")
                    return tags

    def admit(self, fleet: str, devices: Sequence[str] | None, admission: str, actor: str) -> list[str]:
        """Set ``admission`` (accepted or rejected) of ``devices``, or of every pending device of ``fleet`` when
        None; returns the ids changed. Raises: NotFoundError for an unknown device."""
        with self.db.tx() as conn:
            if devices is None:
                q = sa.select(_D.id).where(_D.fleet == fleet, _D.admission == "pending")
                ids = [d for (d,) in conn.execute(q.order_by(_D.id))]
            else:
                ids = list(devices)
                known = {d for (d,) in conn.execute(sa.select(_D.id).where(_D.id.in_(ids)))}
                if missing := [d for d in ids if d not in known]:
                    raise NotFoundError(f"no device {missing[0][:64]!r}")
            for i in range(0, len(ids), CHUNK):
                conn.execute(t.devices.update().where(_D.id.in_(ids[i : i + CHUNK])).values(admission=admission))
            verb = "accept" if admission == "accepted" else "reject"
            for device in ids:
                audit.record(conn, actor, f"device.{verb}", f"device/{device}")
        return ids
