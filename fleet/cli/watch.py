"""``fleetctl watch``: a live view of rollouts and fleet health (rich is imported when it runs)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import click

from fleet.cli.common import api
from fleet.client import ApiClient

ROLLOUT_COLS = ("id", "release", "state", "stage", "progress", "reason")
DEVICE_COLS = ("status", "sku", "model", "count")


@click.command()
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.pass_context
def watch(ctx: click.Context, interval: float, once: bool) -> None:
    """Live view of rollouts and fleet health (Ctrl-C to leave)."""
    from rich.live import Live

    client = api(ctx)
    if once:
        from rich.console import Console

        Console().print(frame(client))
        return
    with Live(frame(client), refresh_per_second=4) as live:
        while True:
            time.sleep(interval)
            live.update(frame(client))


def frame(client: ApiClient) -> Any:
    """One rich renderable: rollouts with progress, then devices by status and model version."""
    from rich.console import Group as RichGroup
    from rich.table import Table

    rollouts = Table(title="rollouts")
    for col in ROLLOUT_COLS:
        rollouts.add_column(col)
    for row in client.get("/rollouts")[-10:]:
        st = client.get(f"/rollouts/{row['id']}")
        prog = " ".join(f"{k}={v}" for k, v in sorted(st["progress"].items()))
        stage = f"{row['stage'] + 1}/{len(st['stages'])}"
        rollouts.add_row(str(row["id"]), row["release"], row["state"], stage, prog, row["reason"][:60])
    devices = Table(title="devices")
    for col in DEVICE_COLS:
        devices.add_column(col)
    counts = Counter(
        (d["status"], d["sku"] or "", f"{d['model_name']}@{d['model_version']}") for d in client.get("/devices")
    )
    for (status, sku, model), n in sorted(counts.items()):
        devices.add_row(status, sku, model, str(n))
    return RichGroup(rollouts, devices)
