"""``fleetctl trust push/show``: the signed trust metadata the fleet and its devices verify bundles with."""

from __future__ import annotations

import json
from pathlib import Path

import click

from device_agent.cliutil import Group
from fleet.cli.common import api, emit, json_option

SHOW_COLS = ["version", "expires", "expired", "root_threshold", "root_keys", "release_threshold", "release_keys"]


@click.group(cls=Group)
def trust() -> None:
    """Trust metadata: which release keys sign bundles, revocations, expiry (edgetool trust init/update)."""


@trust.command("push")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def trust_push(ctx: click.Context, files: tuple[Path, ...], as_json: bool) -> None:
    """Send FILES (the next trust version, or several in order) to the fleet manager and every device.

    The fleet manager verifies them against the version in force (signed by the threshold of its
    root keys and of their own), stores them, verifies releases with them from then on, and sends
    the chain to every device as a retained cmd/trust: devices offline now get it when they
    reconnect. Pushing the version in force again re-sends it. Admin only.
    """
    docs = []
    for path in files:
        try:
            docs.append(json.loads(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"{path} is not a trust document: {exc} [bad-trust]") from None
    result = api(ctx).post("/trust", {"documents": docs})
    if as_json:
        emit(result, True)
    else:
        click.echo(f"trust version {result['version']} in force; sent to {result['devices']} device(s)")


@trust.command("show")
@json_option
@click.pass_context
def trust_show(ctx: click.Context, as_json: bool) -> None:
    """The trust metadata in force on the fleet manager (`devices ls` shows each device's version)."""
    emit(api(ctx).get("/trust"), as_json, None if as_json else SHOW_COLS)
