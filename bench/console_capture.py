"""The console's "Captured data" page with 10,000 devices and 100,000 captured samples in the store:
server-side render time (the page's ``Server-Timing``) p50 and p95 over 50 requests per page, on SQLite and
on PostgreSQL (when reachable). One policy selects a sku of 1,250 devices, so the per-device table walks the
fleet; the samples list is filtered and paged in SQL. Same harness as ``bench/console.py``."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import console
from fleet.store import tables as t

SAMPLES = 100_000
PAGES = [
    ("first page", "/ui/capture"),
    ("page 1000", "/ui/capture?page=1000"),
    ("device filter", "/ui/capture?device=dev-00042"),
    ("reason + since", "/ui/capture?reason=drift&since=1d"),
]


def _sample(i: int, now: float, reason: str) -> dict[str, Any]:
    return {
        "fleet": "default", "device": f"dev-{i % 1000:05d}", "id": f"s{i:06d}", "sku": f"sku-{i % 8}",
        "policy": "p1", "model_name": "digits", "model_version": "1.0.0", "model_sha256": "0" * 64,
        "ts": now - i * 8.64, "reason": reason, "score": 0.5, "top1": i % 10, "conf": 0.5,
        "label": None, "path": f"/bench/{i}", "size": 3136, "sha256": "1" * 64, "received_at": now,
    }  # fmt: skip


def _fill(url: str) -> None:
    """One policy for sku-3 and 100,000 samples over 1,000 devices, spread over the last 10 days."""
    now = time.time()
    reasons = ("low-confidence", "drift", "random")
    rows = [_sample(i, now, reasons[i % 3]) for i in range(SAMPLES)]
    policy = {"fleet": "default", "selector": "sku=sku-3", "model": None, "until": None, "enabled": True}
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(t.captures.insert(), rows)
        conn.execute(
            t.capture_policies.insert(), [{**policy, "rules": {"drift": 0.5}, "created_at": now, "created_by": "bench"}]
        )
    engine.dispose()


def run() -> str:
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as d:
        rows += console._rows("SQLite", f"sqlite:///{Path(d) / 'fleet.db'}", PAGES, _fill)
    with console._pg_schema() as pg:
        rows += console._rows("PostgreSQL", pg, PAGES, _fill)
    head = [
        "## Console: captured-data page with 10,000 devices and 100,000 samples",
        "",
        "Server-side render time of `/ui/capture` (policies, the per-device table over the fleet, the SQL count",
        "and page of 50 samples, then the template; `Server-Timing`) over 50 requests per page after 5 warm-up",
        "ones, signed in, over real HTTP on loopback; held to the devices page's target too, p95 <=",
        f"{console.TARGET_MS:.0f} ms. Load average at the end: {os.getloadavg()[0]:.1f}.",
        "",
        "| store | page | server p50 ms | server p95 ms | round trip p95 ms | p95 <= 200 ms |",
        "|---|---|---:|---:|---:|---|",
    ]
    return "\n".join(head + rows) + "\n"
