"""``fleetctl devices ls/show/tag``: the device registry."""

from __future__ import annotations

import click

from device_agent.cliutil import Group
from fleet.cli.common import api, emit, json_option

LIST_COLS = ["id", "sku", "status", "model_name", "model_version", "trust_version", "tags"]
SHOW_COLS = [*LIST_COLS, "last_seen", "telemetry"]


@click.group(cls=Group)
def devices() -> None:
    """The device registry."""


@devices.command("ls")
@click.option("--selector", default="", help="sku=X,tag=Y")
@json_option
@click.pass_context
def devices_ls(ctx: click.Context, selector: str, as_json: bool) -> None:
    """List devices."""
    emit(api(ctx).get("/devices", selector=selector), as_json, LIST_COLS)


@devices.command("show")
@click.argument("device")
@json_option
@click.pass_context
def devices_show(ctx: click.Context, device: str, as_json: bool) -> None:
    """One device: info, latest telemetry, recent per-minute rollups."""
    emit(api(ctx).get(f"/devices/{device}"), as_json, None if as_json else SHOW_COLS)


@devices.command("tag")
@click.argument("device")
@click.option("--add", multiple=True, help="Tag to add (repeatable).")
@click.option("--remove", multiple=True, help="Tag to remove (repeatable).")
@json_option
@click.pass_context
def devices_tag(ctx: click.Context, device: str, add: tuple[str, ...], remove: tuple[str, ...], as_json: bool) -> None:
    """Add or remove tags (rollout selectors match them)."""
    emit(api(ctx).post(f"/devices/{device}/tags", {"add": list(add), "remove": list(remove)}), as_json)
