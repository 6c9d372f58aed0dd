"""``fleetctl rollout start/status/ls/pause/resume/abort/approve``: staged rollouts."""

from __future__ import annotations

import json
from typing import Any

import click

from device_agent.cliutil import Group
from fleet.cli.common import api, emit, json_option, with_options

STATUS_COLS = ["id", "release", "state", "stage", "phase", "selector", "reason"]
SHOW_COLS = ["id", "release", "state", "stage", "phase", "targets", "progress", "reason"]
VERBS = (
    ("pause", "Stop sending new deployments (in-flight ones finish)."),
    ("resume", "Continue a paused rollout."),
    ("abort", "Abort and roll back every device this rollout changed."),
    ("approve", "Pass a manual approval gate: start the next stage."),
)
START_OPTIONS = [
    click.option(
        "--stages",
        default="5,25,100",
        show_default=True,
        help="Comma-separated stage sizes: percentages (5%,25%,100% or 5,25,100) or device counts.",
    ),
    click.option("--selector", default="", help="Target devices: sku=X,tag=Y (skus: any of; tags: all of)."),
    click.option("--bake", "bake_s", type=float, default=0.0, show_default=True, help="Seconds to watch each stage."),
    click.option("--success", default="90%", show_default=True, help="Stage success threshold (% or count)."),
    click.option("--failure", default="10%", show_default=True, help="Failure threshold: trips → abort and roll back."),
    click.option(
        "--timeout",
        "device_timeout_s",
        type=float,
        default=600.0,
        show_default=True,
        help="Seconds a device has to finish a deployment.",
    ),
    click.option("--retries", type=int, default=1, show_default=True, help="Extra attempts after FAILED or a timeout."),
    click.option("--max-concurrent", type=int, default=1000, show_default=True, help="Deployments in flight at once."),
    click.option(
        "--rate",
        "rate_per_min",
        type=int,
        default=0,
        show_default=True,
        help="New deployments per minute (0: unlimited).",
    ),
    click.option("--approval", is_flag=True, help="Wait for `rollout approve` after every stage but the last."),
    click.option("--no-health", is_flag=True, help="Do not compare model health against not-yet-updated devices."),
    click.option("--max-p95-ratio", type=float, default=1.5, show_default=True, help="Health gate: p95 latency ratio."),
    click.option("--max-error-increase", type=float, default=0.05, show_default=True, help="Health gate: error rate."),
    click.option("--max-psi", type=float, default=0.25, show_default=True, help="Health gate: drift (mean psi_max)."),
    click.option("--max-conf-drop", type=float, default=0.10, show_default=True, help="Health gate: mean confidence."),
    click.option(
        "--health-settle",
        "health_settle_s",
        type=float,
        default=10.0,
        show_default=True,
        help="Seconds after a device's success before its telemetry counts in the health gate.",
    ),
    click.option(
        "--min-p95-delta",
        "min_p95_delta_ms",
        type=float,
        default=0.5,
        show_default=True,
        help="Health gate: a latency shift only fails if the cohorts' medians differ by more ms than this.",
    ),
    click.option(
        "--health-alpha",
        type=float,
        default=0.05,
        show_default=True,
        help="Health gate: significance level of one evaluation, shared by its tests (each at alpha / tests, "
        "Bonferroni; lower: fewer false aborts, slower detection).",
    ),
    click.option(
        "--health-consecutive",
        type=int,
        default=3,
        show_default=True,
        help="Health gate: failed evaluations in a row before an abort.",
    ),
    click.option(
        "--health-min-windows",
        type=int,
        default=5,
        show_default=True,
        help="Health gate: telemetry windows per cohort and sku before a test is run (else inconclusive).",
    ),
    click.option(
        "--health-interval",
        "health_interval_s",
        type=float,
        default=10.0,
        show_default=True,
        help="Health gate: seconds between evaluations (set it to the devices' telemetry interval).",
    ),
    click.option(
        "--health-max-wait",
        "health_max_wait_s",
        type=float,
        default=300.0,
        show_default=True,
        help="Health gate: seconds past the bake time an undecided gate may hold a stage.",
    ),
    click.option(
        "--health-clustered",
        is_flag=True,
        help="Health gate: widen each test by the design effect of windows clustered in devices (see DEFF).",
    ),
    json_option,
]
EVIDENCE_COLS = [
    *("sku", "metric", "outcome", "devices", "windows", "updated", "baseline", "effect", "p", "level", "deff", "fails")
]


@click.group(cls=Group)
def rollout() -> None:
    """Staged rollouts: start, status, pause, resume, abort, approve."""


@rollout.command("start")
@click.argument("release", metavar="NAME@VERSION")
@with_options(START_OPTIONS)
@click.pass_context
def rollout_start(ctx: click.Context, /, **opts: Any) -> None:
    """Start rolling RELEASE out in stages; --json prints the rollout (its "id" first)."""
    as_json = opts.pop("as_json")
    row = api(ctx).post("/rollouts", start_body(opts))
    if as_json:
        click.echo(json.dumps({"id": row["id"], **row}, indent=2, default=str))
    else:
        click.echo(f"rollout {row['id']} started: {row['release']} in stages {', '.join(row['stages'])}")


def start_body(opts: dict[str, Any]) -> dict[str, Any]:
    """The ``POST /rollouts`` body from ``rollout start``'s options (the rest are gates, by name)."""
    release, stages, selector, approval = (opts.pop(k) for k in ("release", "stages", "selector", "approval"))
    health, error_increase = not opts.pop("no_health"), opts.pop("max_error_increase")
    return {
        "release": release,
        "stages": [s for s in stages.split(",") if s.strip()],
        "selector": selector,
        "approval": approval,
        "gates": {**opts, "health": health, "max_error_rate_increase": error_increase},
    }


@rollout.command("status")
@click.argument("rollout_id", type=int)
@json_option
@click.pass_context
def rollout_status(ctx: click.Context, rollout_id: int, as_json: bool) -> None:
    """A rollout's state, stage and deployment counts, and the health gate's evidence per sku and metric."""
    row = api(ctx).get(f"/rollouts/{rollout_id}")
    if as_json:
        emit(row, True)
        return
    emit({**row, "stage": f"{row['stage'] + 1}/{len(row['stages'])}"}, False, SHOW_COLS)
    if row.get("health"):
        click.echo("")
        emit([evidence_row(e) for e in row["health"]], False, EVIDENCE_COLS)


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def evidence_row(e: dict[str, Any]) -> dict[str, str]:
    """One health-gate comparison as a table row: cohorts as updated/baseline, the effect against its size."""
    ratio = "latency" in e["metric"]
    effect = _num(e["effect"], ".2f" if ratio else "+.3f")
    size = f"x{e['threshold']:g}" if ratio else f"{e['threshold']:+g}"
    return {
        "sku": e["sku"],
        "metric": e["metric"],
        "outcome": e["outcome"] + (f" ({e['note']})" if e["note"] else ""),
        "devices": "/".join(map(str, e["devices"])),
        "windows": "/".join(map(str, e["windows"])),
        "updated": _num(e["updated"], ".3g"),
        "baseline": _num(e["baseline"], ".3g"),
        "effect": f"{'x' if ratio and effect else ''}{effect} (size {size})",
        "p": _num(e["p_value"], ".2g"),
        "level": _num(e.get("alpha"), ".2g"),
        "deff": _num(e.get("deff"), ".2g"),
        "fails": str(e["streak"]),
    }


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


for _name, _help in VERBS:
    rollout.add_command(_verb(_name, _help))
