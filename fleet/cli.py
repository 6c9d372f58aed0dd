"""``fleetctl``: the fleet operator's command line. Thin: parse, one API call, print (or ``--json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from device_agent import __version__
from device_agent.cliutil import Group, debug_option
from fleet.cli_common import CONTEXT, DEFAULT_SERVER, api, emit, json_option
from fleet.cli_rollout import rollback, rollout, watch


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="fleetctl")
@click.option("--server", envvar="FLEETCTL_SERVER", default=DEFAULT_SERVER, show_default=True,
              help="Fleet manager URL (env FLEETCTL_SERVER).")  # fmt: skip
@click.option("--token", envvar="FLEETCTL_TOKEN", help="Bearer token for mutating calls (env FLEETCTL_TOKEN).")
@debug_option
@click.pass_context
def cli(ctx: click.Context, server: str, token: str | None) -> None:
    """Operate a fleet: registry, releases, staged rollouts gated on health, telemetry."""
    ctx.obj = {"server": server, "token": token}


# --- devices -------------------------------------------------------------------------------------


@cli.group(cls=Group)
def devices() -> None:
    """The device registry."""


@devices.command("ls")
@click.option("--selector", default="", help="sku=X,tag=Y")
@json_option
@click.pass_context
def devices_ls(ctx: click.Context, selector: str, as_json: bool) -> None:
    """List devices."""
    rows = api(ctx).get("/devices", selector=selector)
    emit(rows, as_json, ["id", "sku", "status", "model_name", "model_version", "tags"])


@devices.command("show")
@click.argument("device")
@json_option
@click.pass_context
def devices_show(ctx: click.Context, device: str, as_json: bool) -> None:
    """One device: info, latest telemetry, recent per-minute rollups."""
    row = api(ctx).get(f"/devices/{device}")
    emit(row, as_json, None if as_json else ["id", "sku", "status", "model_name", "model_version", "tags",
                                              "last_seen", "telemetry"])  # fmt: skip


@devices.command("tag")
@click.argument("device")
@click.option("--add", multiple=True, help="Tag to add (repeatable).")
@click.option("--remove", multiple=True, help="Tag to remove (repeatable).")
@json_option
@click.pass_context
def devices_tag(ctx: click.Context, device: str, add: tuple[str, ...], remove: tuple[str, ...], as_json: bool) -> None:
    """Add or remove tags (rollout selectors match them)."""
    emit(api(ctx).post(f"/devices/{device}/tags", {"add": list(add), "remove": list(remove)}), as_json)


# --- releases ------------------------------------------------------------------------------------

RELEASE_COLS = ["name", "version", "sequence", "size", "sha256", "created_by"]


@cli.group(cls=Group)
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
    emit(api(ctx).get(f"/releases/{release}"), as_json, None if as_json else [*RELEASE_COLS, "artifact"])


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
    emit(refusing, False, ["device", "sku", "reason", "detail"]) if refusing else None
    click.echo(f"{len(rows) - len(refusing)} of {len(rows)} targeted devices would accept {release}")


def parse_tokens(values: tuple[str, ...]) -> dict[str, str]:
    """``SECRET`` (actor "operator") or ``NAME=SECRET`` → {secret: actor}."""
    tokens = {}
    for value in values:
        name, sep, secret = value.partition("=")
        if not sep:
            name, secret = "operator", value
        if len(secret) < 8:
            raise click.BadParameter("a token needs at least 8 characters", param_hint="--token")
        tokens[secret] = name
    return tokens


@cli.command()
@click.option(
    "--db",
    default="sqlite:///fleet.db",
    show_default=True,
    help="Store URL: sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB.",
)
@click.option("--broker", help="mqtt://HOST:PORT (default: start a local broker: mosquitto, else embedded).")
@click.option(
    "--broker-username",
    envvar="FLEETCTL_BROKER_USERNAME",
    help="MQTT username (env FLEETCTL_BROKER_USERNAME; default: from the broker URL, if it has one).",
)
@click.option(
    "--broker-password",
    envvar="FLEETCTL_BROKER_PASSWORD",
    help="MQTT password (env FLEETCTL_BROKER_PASSWORD, which keeps it out of the process list).",
)
@click.option(
    "--broker-cafile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CA certificate for an mqtts:// broker with a private CA (e.g. broker-config --tls's ca.crt).",
)
@click.option(
    "--artifacts",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("artifacts"),
    show_default=True,
    help="Directory for release artifacts (served at /artifacts/).",
)
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT for the HTTP API.")
@click.option(
    "--trust",
    "trust",
    multiple=True,
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Trusted release public key (.pub) or a directory of them (repeatable).",
)
@click.option("--fleet", default="default", show_default=True, help="Fleet id (one fleet per server).")
@click.option(
    "--token",
    "tokens",
    multiple=True,
    envvar="FLEETCTL_TOKEN",
    help="API token, SECRET or NAME=SECRET (repeatable; env FLEETCTL_TOKEN). Default: a random one, printed.",
)
@click.option("--public-url", help="Base URL devices use for artifacts (default http://LISTEN).")
@click.option(
    "--ingest-only",
    is_flag=True,
    help="Follower: share telemetry ingest with the main process (MQTT 5 $share); run no rollouts.",
)
@click.option(
    "--instance",
    default="main",
    show_default=True,
    help="Name of this process among the fleet's (MQTT client id fleetctl-FLEET-INSTANCE).",
)
def serve(**opts: Any) -> None:
    """Run the fleet manager: store, MQTT ingest, rollouts, HTTP API, /metrics."""
    from fleet.server import FleetServer, ServeConfig

    listen, broker, tokens = opts.pop("listen"), opts.pop("broker"), opts.pop("tokens")

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter("must be HOST:PORT", param_hint="--listen")
    local = None
    if broker is None:
        from fleet.broker import start_local_broker

        local = start_local_broker()
        broker = local.url
        click.echo(f"started a local {local.kind} broker at {broker}", err=True)
    token_map = parse_tokens(tokens)
    config = ServeConfig(broker=broker, host=host, port=int(port), tokens=token_map, **opts)
    server = FleetServer(config)
    if not token_map:
        click.echo(f"API token (pass as --token or FLEETCTL_TOKEN): {next(iter(server.tokens))}", err=True)
    try:
        server.run()
    finally:
        if local is not None:
            local.stop()


@cli.command("broker-config")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory to write.")
@click.option("--fleet", default="default", show_default=True)
@click.option("--device", "devices", multiple=True, help="A device id (its MQTT username); repeatable.")
@click.option("--devices-file", type=click.File(), help="A file with one device id per line.")
@click.option("--manager", default="fleetctl", show_default=True, help="The fleet manager's MQTT username.")
@click.option("--reader", "readers", multiple=True, help="A read-only dashboard user (status/info/telemetry).")
@click.option("--port", type=int, default=None, help="Listener port (default 1883, or 8883 with --tls).")
@click.option("--tls", is_flag=True, help="Also write a private CA and a server certificate; listen with TLS.")
@click.option("--hostname", default="localhost", show_default=True, help="Broker host name for the TLS certificate.")
@click.option("--run-as", help="Account mosquitto drops to (its `user` setting); it must read passwd and acl.")
def broker_config(**opts: Any) -> None:
    """Write a Mosquitto config, password file and ACL for a fleet (and TLS material with --tls)."""
    from fleet.brokerconfig import BrokerConfigSpec, write

    out, devices_file, port = opts.pop("out"), opts.pop("devices_file"), opts.pop("port")
    devices = [*opts.pop("devices"), *(line.strip() for line in (devices_file or []) if line.strip())]
    spec = BrokerConfigSpec(devices=tuple(devices), readers=tuple(opts.pop("readers")),
                            port=port or (8883 if opts["tls"] else 1883), **opts)  # fmt: skip
    creds = write(spec, out)
    click.echo(f"wrote {out}/mosquitto.conf, passwd, acl and credentials.txt ({len(creds)} users)"
               + (", ca.crt, server.crt, server.key" if spec.tls else ""))  # fmt: skip
    click.echo(f"run: mosquitto -c {out.resolve()}/mosquitto.conf")


def _register() -> None:
    from fleet.sim.command import simulate_command

    for command in (rollout, rollback, watch, simulate_command):
        cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="fleetctl")
