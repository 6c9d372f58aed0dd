"""``fleetctl releases add/ls/show/check``: signed bundles the fleet can deploy."""

from __future__ import annotations

from pathlib import Path

import click

from device_agent.cliutil import Group
from fleet.cli.common import api, emit, json_option

RELEASE_COLS = ["name", "version", "sequence", "size", "sha256", "created_by"]
CHECK_COLS = ["device", "sku", "reason", "detail"]


@click.group(cls=Group)
def releases() -> None:
    """Signed bundles the fleet can deploy."""


@releases.command("add")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def releases_add(ctx: click.Context, bundle: Path, as_json: bool) -> None:
    """Upload BUNDLE; the server verifies it against the fleet's trusted keys."""
    row = api(ctx).add_release(bundle)
    if as_json:
        emit(row, True)
    else:
        click.echo(f"added {row['name']}@{row['version']} (sequence {row['sequence']}, sha256 {row['sha256'][:16]}…)")


@releases.command("ls")
@json_option
@click.pass_context
def releases_ls(ctx: click.Context, as_json: bool) -> None:
    """List releases."""
    emit(api(ctx).get("/releases"), as_json, RELEASE_COLS)


@releases.command("show")
@click.argument("release", metavar="NAME@VERSION")
@json_option
@click.pass_context
def releases_show(ctx: click.Context, release: str, as_json: bool) -> None:
    """One release with its manifest."""
    emit(api(ctx).get(f"/releases/{release}"), as_json, None if as_json else RELEASE_COLS)


@releases.command("check")
@click.argument("release", metavar="NAME@VERSION")
@click.option("--selector", default="", help="sku=X,tag=Y")
@json_option
@click.pass_context
def releases_check(ctx: click.Context, release: str, selector: str, as_json: bool) -> None:
    """Dry run: which targeted devices would refuse RELEASE, and why."""
    rows = api(ctx).get(f"/releases/{release}/check", selector=selector)
    if as_json:
        emit(rows, True)
        return
    refusing = [r for r in rows if not r["ok"]]
    if refusing:
        emit(refusing, False, CHECK_COLS)
    click.echo(f"{len(rows) - len(refusing)} of {len(rows)} targeted devices would accept {release}")
