"""``fleetctl tokens create/ls/revoke``: API tokens with a role and an expiry (admin only)."""

from __future__ import annotations

import click

from device_agent.cliutil import Group
from fleet.cli.common import api, emit, json_option

TOKEN_COLS = ["name", "role", "created_by", "created_at", "expires_at", "revoked_at"]


@click.group(cls=Group)
def tokens() -> None:
    """API tokens: viewer (read), operator (releases, rollouts, tags), admin (tokens, admission)."""


@tokens.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True)
@click.option("--expires", help="Lifetime, e.g. 12h, 30d, 2w (default: never expires).")
@json_option
@click.pass_context
def tokens_create(ctx: click.Context, name: str, role: str, expires: str | None, as_json: bool) -> None:
    """Create token NAME and print its secret, once: the server keeps only its hash."""
    row = api(ctx).post("/tokens", {"name": name, "role": role, "expires": expires})
    if as_json:
        emit(row, True)
        return
    click.echo(row["secret"])
    click.echo(f"token {row['name']} ({row['role']}) created; the secret above is shown only now", err=True)


@tokens.command("ls")
@json_option
@click.pass_context
def tokens_ls(ctx: click.Context, as_json: bool) -> None:
    """List tokens (names, roles, expiry, revocation; never secrets)."""
    emit(api(ctx).get("/tokens"), as_json, TOKEN_COLS)


@tokens.command("revoke")
@click.argument("name")
@json_option
@click.pass_context
def tokens_revoke(ctx: click.Context, name: str, as_json: bool) -> None:
    """Revoke token NAME: refused at once by every fleet-manager process on the store."""
    row = api(ctx).post(f"/tokens/{name}/revoke")
    if as_json:
        emit(row, True)
    else:
        click.echo(f"token {row['name']} revoked")
