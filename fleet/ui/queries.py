"""Read-only queries the console needs beyond the API's own store calls: a filtered, paged device list
computed in SQL (a page of 10,000 devices reads 50 rows, not 10,000), counts per status, version and sku,
and deployments joined with their rollout's release and their device's sku."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from fleet.store import tables as t
from fleet.store.db import Database

_D = t.devices.c
_P = t.deployments.c
_R = t.rollouts.c
PER_PAGE = 50  # devices per page
STATUSES = ("online", "offline", "unknown")
ADMISSIONS = ("accepted", "pending", "rejected")


@dataclass(frozen=True)
class DeviceFilter:
    """The devices page's query string: every field optional; ``page`` is 1-based."""

    q: str = ""  # a part of the device id
    sku: str = ""
    tag: str = ""
    version: str = ""  # the active model's version
    status: str = ""
    admission: str = ""
    page: int = 1

    def clauses(self, fleet: str) -> list[sa.ColumnElement[bool]]:
        where = [_D.fleet == fleet]
        if self.q:
            where.append(_D.id.contains(self.q, autoescape=True))
        for column, value in ((_D.sku, self.sku), (_D.model_version, self.version)):
            if value:
                where.append(column == value)
        if self.status in STATUSES:
            where.append(_D.status == self.status)
        if self.admission in ADMISSIONS:
            where.append(_D.admission == self.admission)
        if self.tag:
            # tags are a JSON list on SQLite and PostgreSQL alike: match the quoted element in its text
            where.append(sa.cast(_D.tags, sa.Text).contains(f'"{self.tag}"', autoescape=True))
        return where

    def query(self, **changes: Any) -> dict[str, str]:
        """The filter as query parameters (empty ones left out), with ``changes`` applied (e.g. page=2)."""
        shown = replace(self, **changes)
        return {k: str(v) for k, v in vars(shown).items() if v and (k != "page" or v != 1)}


@dataclass(frozen=True)
class DevicePage:
    rows: list[dict[str, Any]]
    total: int
    page: int
    pages: int


class ConsoleQueries:
    """``choices_ttl_s``: seconds the filters' skus and versions are reused (two scans of every device row,
    whose answer changes only when a new sku or version appears)."""

    def __init__(self, db: Database, choices_ttl_s: float = 10.0) -> None:
        self.db = db
        self.choices_ttl_s = choices_ttl_s
        self._choices: dict[str, tuple[float, dict[str, list[str]]]] = {}

    def accepted_devices(self, fleet: str, *, tags: bool = True) -> list[tuple[str, str | None, list[str]]]:
        """(id, sku, tags) of the fleet's accepted devices, by id: the columns a selector reads, nothing more
        (``tags=False``: no tags, each an empty list; decoding 10,000 JSON lists is most of the query's time)."""
        sel = sa.select(_D.id, _D.sku, _D.tags if tags else sa.null()).where(_D.fleet == fleet)
        rows = self.db.tuples(sel.where(_D.admission == "accepted").order_by(_D.id))
        return [(str(i), sku, list(t or [])) for i, sku, t in rows]

    def devices(self, fleet: str, f: DeviceFilter, per_page: int = PER_PAGE) -> DevicePage:
        """One page of the devices ``f`` selects, by id, and how many it selects in all."""
        where = f.clauses(fleet)
        total = int(self.db.tuples(sa.select(sa.func.count()).select_from(t.devices).where(*where))[0][0])
        pages = max(1, -(-total // per_page))
        page = min(max(1, f.page), pages)
        columns = (_D.id, _D.sku, _D.status, _D.model_name, _D.model_version, _D.admission, _D.last_seen, _D.tags)
        q = sa.select(*columns).where(*where).order_by(_D.id).limit(per_page).offset((page - 1) * per_page)
        names = [c.name for c in columns]
        rows = [dict(zip(names, r, strict=True)) for r in self.db.tuples(q)]
        return DevicePage(rows, total, page, pages)

    def counts(self, fleet: str) -> dict[str, list[tuple[str, int]]]:
        """Devices per status, per active model version, per sku and per admission state."""
        groups = {
            "status": (_D.status,),
            "version": (_D.model_name, _D.model_version),
            "sku": (_D.sku,),
            "admission": (_D.admission,),
        }
        out: dict[str, list[tuple[str, int]]] = {}
        for key, cols in groups.items():
            q = sa.select(*cols, sa.func.count()).where(_D.fleet == fleet).group_by(*cols).order_by(*cols)
            out[key] = [
                ("@".join(str(v) for v in r[:-1] if v is not None) or "none", int(r[-1])) for r in self.db.tuples(q)
            ]
        return out

    def choices(self, fleet: str) -> dict[str, list[str]]:
        """The skus and versions the filters offer (reused for ``choices_ttl_s``)."""
        cached = self._choices.get(fleet)
        if cached is not None and time.monotonic() - cached[0] < self.choices_ttl_s:
            return cached[1]
        out = {}
        for key, col in (("sku", _D.sku), ("version", _D.model_version)):
            q = sa.select(col).where(_D.fleet == fleet, col.is_not(None)).distinct().order_by(col)
            out[key] = [str(v) for (v,) in self.db.tuples(q)]
        self._choices[fleet] = (time.monotonic(), out)
        return out

    def deployments(
        self, *, device: str | None = None, rollout: int | None = None, unsuccessful: bool = False, limit: int = 20
    ) -> list[dict[str, Any]]:
        """The newest deployments (of one device or rollout, or of all; only those that did not succeed) with
        their rollout's release."""
        cols = (_P.rollout_id, _P.device_id, _P.stage, _P.state, _P.reason, _P.detail, _P.attempts, _P.updated_at)
        q = sa.select(*cols, _R.release).join(t.rollouts, _R.id == _P.rollout_id)
        if device is not None:
            q = q.where(_P.device_id == device)
        if rollout is not None:
            q = q.where(_P.rollout_id == rollout)
        if unsuccessful:
            q = q.where(_P.state != "SUCCEEDED", _P.reason != "")
        q = q.order_by(_P.updated_at.desc(), _P.id.desc()).limit(limit)
        names = [*(c.name for c in cols), "release"]
        return [dict(zip(names, r, strict=True)) for r in self.db.tuples(q)]

    def per_sku(self, rollout_id: int) -> list[dict[str, Any]]:
        """A rollout's deployments counted per sku and state, with the reasons of those that did not succeed;
        ``SELF_ROLLED_BACK``: rolled back by the device itself, not by a rollback the fleet manager sent."""
        commanded = _P.rollback_sent_at.is_not(None)
        q = (
            sa.select(_D.sku, _P.state, _P.reason, commanded, sa.func.count())
            .join(t.devices, _D.id == _P.device_id)
            .where(_P.rollout_id == rollout_id)
            .group_by(_D.sku, _P.state, _P.reason, commanded)
        )
        skus: dict[str, dict[str, Any]] = {}
        for sku, stored, reason, sent, n in self.db.tuples(q):
            # rolled back by the device's own gate (self-test, probation), not on our command: a failure
            state = "SELF_ROLLED_BACK" if stored == "ROLLED_BACK" and not sent else stored
            entry = skus.setdefault(sku or "unknown", {"sku": sku or "unknown", "states": {}, "reasons": {}})
            entry["states"][state] = entry["states"].get(state, 0) + int(n)
            if reason and state != "SUCCEEDED":
                entry["reasons"][reason] = entry["reasons"].get(reason, 0) + int(n)
        return [skus[k] for k in sorted(skus)]
