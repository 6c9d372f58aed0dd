"""``fleetctl rollout …``, ``fleetctl rollback`` and ``fleetctl watch``."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from device_agent.cliutil import Group
from fleet.cli_common import api, emit, json_option

STATUS_COLS = ["id", "release", "state", "stage", "phase", "selector", "reason"]


@click.group(cls=Group)
def rollout() -> None:
    """Staged rollouts: start, status, pause, resume, abort, approve."""


@rollout.command("start")
@click.argument("release", metavar="NAME@VERSION")
@click.option(
    "--stages",
    default="5,25,100",
    show_default=True,
    help="Comma-separated stage sizes: percentages (5%,25%,100% or 5,25,100) or device counts.",
)
@click.option("--selector", default="", help="Target devices: sku=X,tag=Y (skus: any of; tags: all of).")
@click.option("--bake", "bake_s", type=float, default=0.0, show_default=True, help="Seconds to watch each stage.")
@click.option("--success", default="90%", show_default=True, help="Stage success threshold (% or count).")
@click.option("--failure", default="10%", show_default=True, help="Failure threshold: trips → abort and roll back.")
@click.option(
    "--timeout",
    "device_timeout_s",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds a device has to finish a deployment.",
)
@click.option("--retries", type=int, default=1, show_default=True, help="Extra attempts after FAILED or a timeout.")
@click.option("--max-concurrent", type=int, default=1000, show_default=True, help="Deployments in flight at once.")
@click.option(
    "--rate", "rate_per_min", type=int, default=0, show_default=True, help="New deployments per minute (0: unlimited)."
)
@click.option("--approval", is_flag=True, help="Wait for `rollout approve` after every stage but the last.")
@click.option("--no-health", is_flag=True, help="Do not compare model health against not-yet-updated devices.")
@click.option("--max-p95-ratio", type=float, default=1.5, show_default=True, help="Health gate: p95 latency ratio.")
@click.option("--max-error-increase", type=float, default=0.05, show_default=True, help="Health gate: error rate.")
@click.option("--max-psi", type=float, default=0.25, show_default=True, help="Health gate: drift (mean psi_max).")
@click.option("--max-conf-drop", type=float, default=0.10, show_default=True, help="Health gate: mean confidence.")
@click.option(
    "--health-settle",
    "health_settle_s",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds after a device's success before its telemetry counts in the health gate.",
)
@click.option(
    "--min-p95-delta",
    "min_p95_delta_ms",
    type=float,
    default=2.0,
    show_default=True,
    help="Health gate: a p95 ratio only trips if updated p95 exceeds baseline by more ms than this.",
)
@json_option
@click.pass_context
def rollout_start(ctx: click.Context, /, **opts: Any) -> None:
    """Start rolling RELEASE out in stages; --json prints the rollout (its "id" first)."""
    release, as_json = opts.pop("release"), opts.pop("as_json")
    health, error_increase = not opts.pop("no_health"), opts.pop("max_error_increase")
    body = {
        "release": release,
        "stages": [s for s in opts.pop("stages").split(",") if s.strip()],
        "selector": opts.pop("selector"),
        "approval": opts.pop("approval"),
        "gates": {
            **opts,
            "health": health,
            "max_error_rate_increase": error_increase,
        },
    }
    row = api(ctx).post("/rollouts", body)
    if as_json:
        click.echo(json.dumps({"id": row["id"], **row}, indent=2, default=str))
    else:
        click.echo(f"rollout {row['id']} started: {row['release']} in stages {', '.join(row['stages'])}")


@rollout.command("status")
@click.argument("rollout_id", type=int)
@json_option
@click.pass_context
def rollout_status(ctx: click.Context, rollout_id: int, as_json: bool) -> None:
    """A rollout's state, stage and deployment counts."""
    row = api(ctx).get(f"/rollouts/{rollout_id}")
    if as_json:
        emit(row, True)
        return
    emit({**row, "stage": f"{row['stage'] + 1}/{len(row['stages'])}"}, False,
         ["id", "release", "state", "stage", "phase", "targets", "progress", "reason"])  # fmt: skip


@rollout.command("ls")
@json_option
@click.pass_context
def rollout_ls(ctx: click.Context, as_json: bool) -> None:
    """List rollouts."""
    rows = api(ctx).get("/rollouts")
    emit(rows if as_json else [{**r, "stage": r["stage"] + 1} for r in rows], as_json, STATUS_COLS)


def _verb(verb: str, help_text: str) -> click.Command:
    @click.command(verb, help=help_text)
    @click.argument("rollout_id", type=int)
    @json_option
    @click.pass_context
    def command(ctx: click.Context, rollout_id: int, as_json: bool) -> None:
        row = api(ctx).post(f"/rollouts/{rollout_id}/{verb}")
        if as_json:
            emit(row, True)
        else:
            click.echo(f"rollout {rollout_id}: {row['state']} (stage {row['stage'] + 1}/{len(row['stages'])})")

    return command


for _name, _help in (
    ("pause", "Stop sending new deployments (in-flight ones finish)."),
    ("resume", "Continue a paused rollout."),
    ("abort", "Abort and roll back every device this rollout changed."),
    ("approve", "Pass a manual approval gate: start the next stage."),
):
    rollout.add_command(_verb(_name, _help))


@click.command()
@click.argument("release", metavar="NAME@VERSION")
@json_option
@click.pass_context
def rollback(ctx: click.Context, release: str, as_json: bool) -> None:
    """Roll every device that got RELEASE back to its previous model."""
    row = api(ctx).post("/rollback", {"release": release})
    emit(row, True) if as_json else click.echo(f"rolling back {release}: rollouts {row['rollouts']}")


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


def frame(client: Any) -> Any:
    """One rich renderable: rollouts with progress, then devices by status and model version."""
    from collections import Counter

    from rich.console import Group as RichGroup
    from rich.table import Table

    rollouts = Table(title="rollouts")
    for col in ("id", "release", "state", "stage", "progress", "reason"):
        rollouts.add_column(col)
    for row in client.get("/rollouts")[-10:]:
        st = client.get(f"/rollouts/{row['id']}")
        prog = " ".join(f"{k}={v}" for k, v in sorted(st["progress"].items()))
        rollouts.add_row(str(row["id"]), row["release"], row["state"], f"{row['stage'] + 1}/{len(st['stages'])}",
                         prog, row["reason"][:60])  # fmt: skip
    devices = Table(title="devices")
    for col in ("status", "sku", "model", "count"):
        devices.add_column(col)
    counts = Counter((d["status"], d["sku"] or "", f"{d['model_name']}@{d['model_version']}")
                     for d in client.get("/devices"))  # fmt: skip
    for (status, sku, model), n in sorted(counts.items()):
        devices.add_row(status, sku, model, str(n))
    return RichGroup(rollouts, devices)
