"""``fleetctl rollback``: roll a release back wherever it went."""

from __future__ import annotations

import click

from fleet.cli.common import api, emit, json_option


@click.command()
@click.argument("release", metavar="NAME@VERSION")
@json_option
@click.pass_context
def rollback(ctx: click.Context, release: str, as_json: bool) -> None:
    """Roll every device that got RELEASE back to its previous model."""
    row = api(ctx).post("/rollback", {"release": release})
    if as_json:
        emit(row, True)
    else:
        click.echo(f"rolling back {release}: rollouts {row['rollouts']}")
