"""The store: open (and migrate) a SQLite file or a PostgreSQL database; every transition is one transaction.

States are ``str`` enums stored by value. Rollout transitions are compare-and-set on (state, stage,
phase), so an operator's pause can never be overwritten by a tick computed just before it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from device_agent.protocol import DeploymentEvent, DeploymentState, Info
from fleet.errors import ConflictError, NotFoundError
from fleet.rollout.model import (
    Deploy,
    DeploymentView,
    Phase,
    RolloutSpec,
    RolloutState,
    Transition,
)
from fleet.store import tables as t

Row = dict[str, Any]
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


@dataclass(frozen=True)
class Rollup:
    """One device's telemetry summed over one minute (the ingest flushes these)."""

    device_id: str
    minute: int
    points: int
    inferences: float
    errors: float
    ips_sum: float
    lat_p95_sum: float
    lat_p95_max: float
    conf_sum: float
    psi_max: float


# Statements on the ingest's hot path, built once: thousands of devices send several events each.
_D, _DEP = t.devices.c, t.deployments.c
_DEVICE_EXISTS = sa.select(_D.id).where(_D.id == sa.bindparam("_id"))
_SET_STATUS = t.devices.update().where(_D.id == sa.bindparam("_id"))
_SET_STATUS_LAST_SEEN = _SET_STATUS.values(status=sa.bindparam("status"), last_seen=sa.bindparam("last_seen"))
_TOUCH = _SET_STATUS.values(last_seen=sa.bindparam("last_seen"))
_SET_INFO = _SET_STATUS.values(
    {k: sa.bindparam(k) for k in ("sku", "info", "model_name", "model_version", "model_sequence", "last_seen")}
)
_DEPLOYMENT_STATE = sa.select(_DEP.state, _DEP.reason).where(
    _DEP.deployment_id == sa.bindparam("_dep"), _DEP.device_id == sa.bindparam("_dev")
)
_SET_DEPLOYMENT = t.deployments.update().where(_DEP.deployment_id == sa.bindparam("_dep"))
_APPLY_EVENT = _SET_DEPLOYMENT.values(
    {k: sa.bindparam(k) for k in ("state", "reason", "detail", "updated_at", "finished_at")}
)


_R = t.telemetry_rollups.c
_MERGE_ROLLUP = (
    t.telemetry_rollups.update()
    .where(_R.device_id == sa.bindparam("_device_id"), _R.minute == sa.bindparam("_minute"))
    .values(
        points=_R.points + sa.bindparam("_points"),
        inferences=_R.inferences + sa.bindparam("_inferences"),
        errors=_R.errors + sa.bindparam("_errors"),
        ips_sum=_R.ips_sum + sa.bindparam("_ips_sum"),
        lat_p95_sum=_R.lat_p95_sum + sa.bindparam("_lat_p95_sum"),
        lat_p95_max=sa.case((_R.lat_p95_max > sa.bindparam("_lat_p95_max"), _R.lat_p95_max),
                            else_=sa.bindparam("_lat_p95_max")),
        conf_sum=_R.conf_sum + sa.bindparam("_conf_sum"),
        psi_max=sa.case((_R.psi_max > sa.bindparam("_psi_max"), _R.psi_max), else_=sa.bindparam("_psi_max")),
    )
)  # fmt: skip


def _sqlite_pragmas(dbapi_conn: Any, record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Store:
    """All persistent state of one fleet manager (devices, releases, rollouts, deployments, audit)."""

    def __init__(self, url: str, *, migrate_schema: bool = True) -> None:
        if url.startswith("sqlite") and ":memory:" not in url:
            Path(url.split("///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        self._local = threading.local()  # the connection of an open batch() per thread
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        if migrate_schema:
            migrate(self.engine)

    @classmethod
    def sqlite(cls, path: str | Path) -> Store:
        return cls(f"sqlite:///{Path(path).resolve()}")

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        """One transaction; inside ``batch()`` on the same thread, the batch's transaction."""
        outer: Connection | None = getattr(self._local, "conn", None)
        if outer is not None:
            yield outer
            return
        with self.engine.begin() as conn:
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    def batch(self) -> AbstractContextManager[Connection]:
        """Group the writes of this thread into one transaction (one commit for many ingested messages).

        Anything that fails inside rolls the whole batch back; the caller decides whether to retry parts.
        """
        return self.tx()

    def _rows(self, query: sa.Select[Any]) -> list[Row]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    # --- leadership -----------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, now: float, ttl: float) -> bool:
        """Take or renew lease ``name`` for ``holder`` until ``now + ttl``; False while another holds it."""
        c = t.leases.c
        with self.tx() as conn:
            taken = conn.execute(
                t.leases.update()
                .where(c.name == name, sa.or_(c.holder == holder, c.expires_at < now))
                .values(holder=holder, expires_at=now + ttl)
            )
            if taken.rowcount == 1:
                return True
            if conn.execute(sa.select(c.holder).where(c.name == name)).first() is not None:
                return False
        try:
            with self.tx() as conn:
                conn.execute(t.leases.insert().values(name=name, holder=holder, expires_at=now + ttl))
        except sa.exc.IntegrityError:  # another process inserted it first
            return False
        return True

    def lease_holder(self, name: str, now: float) -> str | None:
        c = t.leases.c
        rows = self._rows(sa.select(t.leases).where(c.name == name, c.expires_at >= now))
        return rows[0]["holder"] if rows else None

    # --- audit ----------------------------------------------------------------------------------

    @staticmethod
    def _audit(conn: Connection, actor: str, action: str, target: str, detail: str = "") -> None:
        conn.execute(
            t.audit.insert().values(ts=time.time(), actor=actor, action=action, target=target, detail=detail[:1024])
        )

    def audit_log(self, target: str | None = None, limit: int = 200) -> list[Row]:
        q = sa.select(t.audit).order_by(t.audit.c.id.desc()).limit(limit)
        if target is not None:
            q = q.where(t.audit.c.target == target)
        return self._rows(q)

    # --- devices --------------------------------------------------------------------------------

    def _ensure_device(self, conn: Connection, fleet: str, device: str, now: float) -> None:
        exists = conn.execute(_DEVICE_EXISTS, {"_id": device}).first()
        if exists is None:
            conn.execute(
                t.devices.insert().values(
                    id=device, fleet=fleet, tags=[], status="unknown", first_seen=now, last_seen=now
                )
            )

    def record_info(self, fleet: str, device: str, info: Info, now: float) -> None:
        """Register the device if new and store its latest info (model, hardware)."""
        with self.tx() as conn:
            self._ensure_device(conn, fleet, device, now)
            model = info.model
            values = {"sku": info.sku, "info": info.to_dict(), "model_name": model.name if model else None,
                      "model_version": model.version if model else None,
                      "model_sequence": model.sequence if model else None, "last_seen": now}  # fmt: skip
            conn.execute(_SET_INFO, {"_id": device, **values})

    def record_status(self, fleet: str, device: str, status: str, now: float) -> None:
        with self.tx() as conn:
            self._ensure_device(conn, fleet, device, now)
            conn.execute(_SET_STATUS_LAST_SEEN, {"_id": device, "status": status, "last_seen": now})

    def touch(self, fleet: str, last_seen: dict[str, float]) -> None:
        """Update last-seen times, registering devices seen for the first time (one transaction)."""
        if not last_seen:
            return
        c = t.devices.c
        with self.tx() as conn:
            known: set[str] = set()
            ids = sorted(last_seen)
            for i in range(0, len(ids), 500):
                known.update(d for (d,) in conn.execute(sa.select(c.id).where(c.id.in_(ids[i : i + 500]))))
            if known:
                conn.execute(_TOUCH, [{"_id": d, "last_seen": last_seen[d]} for d in known])
            for device in set(ids) - known:
                self._ensure_device(conn, fleet, device, last_seen[device])

    def devices(self, fleet: str | None = None) -> list[Row]:
        q = sa.select(t.devices).order_by(t.devices.c.id)
        if fleet is not None:
            q = q.where(t.devices.c.fleet == fleet)
        return self._rows(q)

    def device_states(self, fleet: str, *, tags: bool = True) -> list[tuple[Any, ...]]:
        """(id, sku, status, model_name, model_sequence, tags) per device: what a rollout decides on, without
        the ``info`` document (and without tags unless asked: JSON decoding 10,000 of them costs)."""
        c = t.devices.c
        tag_col = c.tags if tags else sa.null()
        q = sa.select(c.id, c.sku, c.status, c.model_name, c.model_sequence, tag_col).where(c.fleet == fleet)
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(q.order_by(c.id))]

    def device(self, device: str) -> Row:
        """Raises: NotFoundError."""
        rows = self._rows(sa.select(t.devices).where(t.devices.c.id == device))
        if not rows:
            raise NotFoundError(f"no device {device[:64]!r}")
        return rows[0]

    def tag_device(self, device: str, add: Sequence[str], remove: Sequence[str], actor: str) -> list[str]:
        """Raises: NotFoundError for an unknown device."""
        with self.tx() as conn:
            row = conn.execute(sa.select(t.devices.c.tags).where(t.devices.c.id == device)).first()
            if row is None:
                raise NotFoundError(f"no device {device[:64]!r}")
            tags = sorted((set(row.tags or []) | set(add)) - set(remove))
            conn.execute(t.devices.update().where(t.devices.c.id == device).values(tags=tags))
            self._audit(conn, actor, "device.tag", f"device/{device}", f"+{list(add)} -{list(remove)}")
        return tags

    # --- telemetry rollups ----------------------------------------------------------------------

    def add_rollups(self, rollups: Sequence[Rollup]) -> None:
        """Merge per-minute rollups into the store (sums add up, maxima take the max).

        Several ingest processes may insert the same (device, minute) at once: the loser retries,
        and then finds the row to add to.
        """
        try:
            self._add_rollups(rollups)
        except sa.exc.IntegrityError:
            self._add_rollups(rollups)

    def _add_rollups(self, rollups: Sequence[Rollup]) -> None:
        """Rows that exist are updated and new ones inserted, each kind as one executemany."""
        if not rollups:
            return
        c = t.telemetry_rollups.c
        with self.tx() as conn:
            existing: set[tuple[str, int]] = set()
            minutes = sorted({r.minute for r in rollups})
            devices = sorted({r.device_id for r in rollups})
            for i in range(0, len(devices), 500):
                q = sa.select(c.device_id, c.minute).where(c.device_id.in_(devices[i : i + 500]), c.minute.in_(minutes))
                existing.update((d, m) for d, m in conn.execute(q))
            old = [r for r in rollups if (r.device_id, r.minute) in existing]
            new = [r for r in rollups if (r.device_id, r.minute) not in existing]
            if old:
                conn.execute(_MERGE_ROLLUP, [{f"_{k}": v for k, v in r.__dict__.items()} for r in old])
            if new:
                conn.execute(t.telemetry_rollups.insert(), [r.__dict__ for r in new])

    def rollups(self, device: str) -> list[Row]:
        c = t.telemetry_rollups.c
        return self._rows(sa.select(t.telemetry_rollups).where(c.device_id == device).order_by(c.minute))

    # --- releases -------------------------------------------------------------------------------

    def add_release(self, values: Row, actor: str) -> Row:
        """Record a verified release. Raises: ConflictError if NAME@VERSION exists."""
        name, version = values["name"], values["version"]
        with self.tx() as conn:
            c = t.releases.c
            if conn.execute(sa.select(c.id).where(c.name == name, c.version == version)).first():
                raise ConflictError(f"release {name}@{version} already exists")
            conn.execute(t.releases.insert().values(**values, created_at=time.time(), created_by=actor))
            self._audit(conn, actor, "release.add", f"release/{name}@{version}", values["sha256"])
        return self.release(name, version)

    def releases(self) -> list[Row]:
        return self._rows(sa.select(t.releases).order_by(t.releases.c.name, t.releases.c.sequence))

    def release(self, name: str, version: str) -> Row:
        """Raises: NotFoundError."""
        c = t.releases.c
        rows = self._rows(sa.select(t.releases).where(c.name == name, c.version == version))
        if not rows:
            raise NotFoundError(f"no release {name[:64]}@{version[:64]}")
        return rows[0]

    def release_by_sha(self, sha256: str) -> Row:
        """Raises: NotFoundError."""
        rows = self._rows(sa.select(t.releases).where(t.releases.c.sha256 == sha256))
        if not rows:
            raise NotFoundError(f"no artifact {sha256[:64]}")
        return rows[0]

    # --- rollouts -------------------------------------------------------------------------------

    def create_rollout(self, release: Row, spec: RolloutSpec, actor: str, now: float) -> int:
        with self.tx() as conn:
            rid = conn.execute(
                t.rollouts.insert().values(
                    release_id=release["id"],
                    release=spec.release,
                    selector=str(spec.selector),
                    spec=spec.to_dict(),
                    state=RolloutState.RUNNING.value,
                    stage=0,
                    phase=Phase.DEPLOYING.value,
                    phase_started_at=now,
                    reason="started",
                    created_at=now,
                    updated_at=now,
                    created_by=actor,
                )
            ).inserted_primary_key
            rid = int(rid[0]) if rid else 0
            self._audit(conn, actor, "rollout.start", f"rollout/{rid}", f"{spec.release} stages {len(spec.stages)}")
        return rid

    def rollout(self, rollout_id: int) -> Row:
        """Raises: NotFoundError."""
        rows = self._rows(sa.select(t.rollouts).where(t.rollouts.c.id == rollout_id))
        if not rows:
            raise NotFoundError(f"no rollout {rollout_id}")
        return rows[0]

    def rollouts(self, *, states: Sequence[RolloutState] | None = None, release: str | None = None) -> list[Row]:
        q = sa.select(t.rollouts).order_by(t.rollouts.c.id)
        if states is not None:
            q = q.where(t.rollouts.c.state.in_([s.value for s in states]))
        if release is not None:
            q = q.where(t.rollouts.c.release == release)
        return self._rows(q)

    def transition(self, rollout_id: int, expect: Row, to: Transition, actor: str, now: float) -> bool:
        """Compare-and-set the rollout's (state, stage, phase) and audit it; False if it changed meanwhile."""
        c = t.rollouts.c
        with self.tx() as conn:
            result = conn.execute(
                t.rollouts.update()
                .where(c.id == rollout_id, c.state == expect["state"], c.stage == expect["stage"])
                .where(c.phase == expect["phase"])
                .values(
                    state=to.state.value,
                    stage=to.stage,
                    phase=to.phase.value,
                    phase_started_at=now if (to.stage, to.phase.value) != (expect["stage"], expect["phase"]) else
                    expect["phase_started_at"],
                    reason=to.reason[:1024],
                    updated_at=now,
                )
            )  # fmt: skip
            if result.rowcount != 1:
                return False
            detail = f"{expect['state']}/{expect['stage'] + 1}/{expect['phase']} → {to.state.value}/{to.stage + 1}/"
            self._audit(
                conn, actor, "rollout.transition", f"rollout/{rollout_id}", f"{detail}{to.phase.value}: {to.reason}"
            )
        return True

    # --- deployments ----------------------------------------------------------------------------

    def deployments(self, rollout_id: int) -> list[Row]:
        c = t.deployments.c
        return self._rows(sa.select(t.deployments).where(c.rollout_id == rollout_id).order_by(c.id))

    def deployment_views(self, rollout_id: int) -> dict[str, DeploymentView]:
        c = t.deployments.c
        q = sa.select(c.device_id, c.deployment_id, c.state, c.stage, c.attempts, c.sent_at, c.finished_at,
                      c.reason, c.rollback_sent_at).where(c.rollout_id == rollout_id).order_by(c.id)  # fmt: skip
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return {
            dev: DeploymentView(
                dev, dep, DeploymentState(state), stage, attempts, sent, finished, reason, rb is not None
            )
            for dev, dep, state, stage, attempts, sent, finished, reason, rb in rows
        }

    def record_deploy(self, rollout_id: int, action: Deploy, now: float) -> None:
        """Record a new attempt (QUEUED, not yet sent) before the command is published."""
        self.record_deploys(rollout_id, [action], now)

    def record_deploys(self, rollout_id: int, actions: Sequence[Deploy], now: float) -> None:
        """Record new attempts in one transaction: first attempts as one multi-row insert, retries as
        updates of the device's row."""
        c = t.deployments.c
        first = [a for a in actions if a.attempt <= 1]
        with self.tx() as conn:
            if first:
                conn.execute(t.deployments.insert(), [
                    {"rollout_id": rollout_id, "device_id": a.device, "created_at": now, **_queued(a, now)}
                    for a in first
                ])  # fmt: skip
            for a in actions:
                if a.attempt > 1:
                    conn.execute(
                        t.deployments.update()
                        .where(c.rollout_id == rollout_id, c.device_id == a.device)
                        .values(**_queued(a, now))
                    )

    def mark_sent(self, deployment_ids: Sequence[str], now: float) -> None:
        self._set_many(deployment_ids, sent_at=now, updated_at=now)

    def mark_rollbacks_sent(self, deployment_ids: Sequence[str], now: float) -> None:
        self._set_many(deployment_ids, rollback_sent_at=now, updated_at=now)

    def _set_many(self, deployment_ids: Sequence[str], **values: Any) -> None:
        c = t.deployments.c
        with self.tx() as conn:
            for i in range(0, len(deployment_ids), 500):
                chunk = list(deployment_ids[i : i + 500])
                conn.execute(t.deployments.update().where(c.deployment_id.in_(chunk)).values(**values))

    def _set(self, deployment_id: str, **values: Any) -> None:
        with self.tx() as conn:
            conn.execute(t.deployments.update().where(t.deployments.c.deployment_id == deployment_id).values(**values))

    def mark_timed_out(self, deployment_id: str, now: float) -> None:
        self._set(deployment_id, state=DeploymentState.FAILED.value, reason="timeout", finished_at=now, updated_at=now)

    def apply_event(self, device: str, event: DeploymentEvent, now: float) -> bool:
        """Apply a device's deployment event; False (nothing changed) for an unknown or stale one.

        A terminal state is left only for ROLLED_BACK (a rollback), or for PROBATION/SUCCEEDED after
        a timeout (the device was slow, not dead). ``FAILED no-previous`` answers a rollback command
        the device could not act on yet; it is not the deployment's outcome.
        """
        with self.tx() as conn:
            row = conn.execute(_DEPLOYMENT_STATE, {"_dep": event.deployment_id, "_dev": device}).first()
            if row is None:
                return False
            if not _moves(DeploymentState(row.state), row.reason, event):
                return False
            finished = now if event.state.terminal else None
            conn.execute(_APPLY_EVENT, {"_dep": event.deployment_id, "state": event.state.value,
                                        "reason": event.reason[:64], "detail": event.detail[:1024],
                                        "updated_at": now, "finished_at": finished})  # fmt: skip
        return True


def _queued(action: Deploy, now: float) -> dict[str, Any]:
    """A deployment row's columns for a new attempt: QUEUED, not yet sent."""
    return {"deployment_id": action.deployment_id, "stage": action.stage, "state": DeploymentState.QUEUED.value,
            "attempts": action.attempt, "sent_at": None, "updated_at": now, "finished_at": None,
            "reason": "", "detail": ""}  # fmt: skip


def _moves(current: DeploymentState, reason: str, event: DeploymentEvent) -> bool:
    if current is event.state or (event.state is DeploymentState.FAILED and event.reason == "no-previous"):
        return False
    if not current.terminal or event.state is DeploymentState.ROLLED_BACK:
        return True
    late = current is DeploymentState.FAILED and reason == "timeout"
    return late and event.state in (DeploymentState.PROBATION, DeploymentState.SUCCEEDED)
