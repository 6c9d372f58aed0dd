"""``fleetctl audit``: who did what, from where, and which calls were refused."""

from __future__ import annotations

import time

import click

from fleet.access import parse_duration
from fleet.cli.common import api, emit, json_option
from fleet.errors import InvalidRequestError

AUDIT_COLS = ["ts", "actor", "role", "token", "source", "action", "target", "detail"]


def parse_since(text: str, now: float) -> float:
    """``30m``/``2d`` (ago), or epoch seconds. Raises: click.BadParameter."""
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else now - parse_duration(text)
    except InvalidRequestError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


@click.command()
@click.option("--since", help="Entries newer than this: 30m, 12h, 7d (ago) or epoch seconds.")
@click.option("--actor", help="Only this token name (or runner, -).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=200, show_default=True)
@json_option
@click.pass_context
def audit(ctx: click.Context, since: str | None, actor: str | None, limit: int, as_json: bool) -> None:
    """The audit log, newest first: every change and every refused call."""
    since_ts = parse_since(since, time.time()) if since else None
    rows = api(ctx).get("/audit", since=since_ts, actor=actor, limit=limit)
    if not as_json:
        rows = [{**r, "ts": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["ts"]))} for r in rows]
    emit(rows, as_json, AUDIT_COLS)
