"""``fleetctl devices ls/show/tag/accept/reject``: the device registry and its admission."""

from __future__ import annotations

import click

from device_agent.cliutil import Group
from fleet.cli.common import api, emit, json_option

LIST_COLS = ["id", "sku", "status", "admission", "model_name", "model_version", "trust_version", "tags"]
SHOW_COLS = [*LIST_COLS, "last_seen", "capture", "telemetry"]


@click.group(cls=Group)
def devices() -> None:
    """The device registry."""


@devices.command("ls")
@click.option("--selector", default="", help="sku=X,tag=Y")
@click.option("--admission", type=click.Choice(["accepted", "pending", "rejected"]), help="Only devices in this state.")
@json_option
@click.pass_context
def devices_ls(ctx: click.Context, selector: str, admission: str | None, as_json: bool) -> None:
    """List devices."""
    emit(api(ctx).get("/devices", selector=selector, admission=admission), as_json, LIST_COLS)


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


def _admission(verb: str, help_text: str) -> click.Command:
    @click.command(verb, help=help_text)
    @click.argument("device_ids", metavar="[ID]...", nargs=-1)
    @click.option("--all-pending", is_flag=True, help="Every pending device.")
    @json_option
    @click.pass_context
    def command(ctx: click.Context, device_ids: tuple[str, ...], all_pending: bool, as_json: bool) -> None:
        if bool(device_ids) == all_pending:
            raise click.UsageError("give device IDs or --all-pending")
        row = api(ctx).post(f"/devices/admission/{verb}", {"devices": list(device_ids), "all_pending": all_pending})
        if as_json:
            emit(row, True)
        else:
            click.echo(f"{row['admission']}: {len(row['devices'])} device(s) {' '.join(row['devices'])[:400]}")

    return command


devices.add_command(_admission("accept", "Admit pending (or rejected) devices: rollouts may target them."))
devices.add_command(_admission("reject", "Refuse devices: they are never targeted (admin)."))
