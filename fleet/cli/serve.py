"""``fleetctl serve``: run the fleet manager. The server (paho, FastAPI, SQLAlchemy) is imported when it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from fleet.access import MIN_SECRET
from fleet.cli.common import with_options

SERVE_OPTIONS = [
    click.option(
        "--db",
        default="sqlite:///fleet.db",
        show_default=True,
        help="Store URL: sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB.",
    ),
    click.option(
        "--broker",
        help="mqtt://HOST:PORT, or the nodes of a clustered broker comma-separated (failover in list order; "
        "default: start a local broker: mosquitto, else embedded).",
    ),
    click.option(
        "--broker-protocol",
        type=click.Choice(["auto", "5", "3.1.1"]),
        default="auto",
        show_default=True,
        help="MQTT version; without 5 (no shared subscriptions) managers partition telemetry storage by device.",
    ),
    click.option(
        "--ingest-stream",
        type=click.Choice(["paho", "lean"]),
        default="paho",
        show_default=True,
        help="lean: read telemetry with the lean MQTT 3.1.1 reader on a second connection (faster ingest).",
    ),
    click.option(
        "--lease-ttl",
        type=click.FloatRange(min=1.0, max=600.0),
        default=10.0,
        show_default=True,
        help="Seconds before another process takes over rollouts (and ingest) from a silent one.",
    ),
    click.option(
        "--broker-username",
        envvar="FLEETCTL_BROKER_USERNAME",
        help="MQTT username (env FLEETCTL_BROKER_USERNAME; default: from the broker URL, if it has one).",
    ),
    click.option(
        "--broker-password",
        envvar="FLEETCTL_BROKER_PASSWORD",
        help="MQTT password (env FLEETCTL_BROKER_PASSWORD, which keeps it out of the process list).",
    ),
    click.option(
        "--broker-cafile",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="CA certificate for an mqtts:// broker with a private CA (e.g. broker-config --tls's ca.crt).",
    ),
    click.option(
        "--artifacts",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("artifacts"),
        show_default=True,
        help="Directory for release artifacts (served at /artifacts/).",
    ),
    click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT for the HTTP API."),
    click.option(
        "--trust",
        "trust",
        multiple=True,
        type=click.Path(exists=True, path_type=Path),
        help="Trusted release public key (.pub) or a directory of them (repeatable; simple setups).",
    ),
    click.option(
        "--trust-metadata",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Signed trust.json the devices were flashed with (replaces --trust; enables `trust push`).",
    ),
    click.option("--fleet", default="default", show_default=True, help="Fleet id (one fleet per server)."),
    click.option(
        "--token",
        "tokens",
        multiple=True,
        envvar="FLEETCTL_TOKEN",
        help="Bootstrap admin token, SECRET or NAME=SECRET (repeatable). Prefer env FLEETCTL_TOKEN or "
        "--token-file: a command line is visible in ps. Default: a random one, printed once.",
    ),
    click.option(
        "--token-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="File with bootstrap admin tokens, one SECRET or NAME=SECRET per line, # comments (keep it mode 0600).",
    ),
    click.option(
        "--admission",
        type=click.Choice(["auto", "manual"]),
        default="auto",
        show_default=True,
        help="manual: unknown devices are pending (never targeted) until `devices accept`.",
    ),
    click.option("--max-devices", type=click.IntRange(min=1), help="Devices the fleet registers at most."),
    click.option("--public-metrics", is_flag=True, help="Serve /metrics without a token (for a Prometheus scraper)."),
    click.option("--public-url", help="Base URL devices use for artifacts (default http://LISTEN)."),
    click.option(
        "--ingest-only",
        is_flag=True,
        help="Follower: share telemetry ingest (MQTT 5 $share, else a partition by device); run no rollouts.",
    ),
    click.option("--capture-retention", default="90d", show_default=True, help="How long captured samples are kept."),
    click.option(
        "--capture-max-gb",
        type=click.FloatRange(0.001),
        default=10.0,
        show_default=True,
        help="Captured samples kept at most (GiB; the oldest go first).",
    ),
    click.option(
        "--instance",
        default="main",
        show_default=True,
        help="Name of this process among the fleet's (MQTT client id fleetctl-FLEET-INSTANCE).",
    ),
]


def parse_tokens(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``SECRET`` (name "bootstrap") or ``NAME=SECRET`` → {secret: name}; each is an admin."""
    tokens = {}
    for value in values:
        name, sep, secret = value.strip().partition("=")
        if not sep:
            name, secret = "bootstrap", value.strip()
        if len(secret) < MIN_SECRET:
            raise click.BadParameter(f"a token needs at least {MIN_SECRET} characters", param_hint="--token")
        tokens[secret] = name
    return tokens


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port)."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter("must be HOST:PORT", param_hint="--listen")
    return host, int(port)


@click.command()
@with_options(SERVE_OPTIONS)
def serve(**opts: Any) -> None:
    """Run the fleet manager: store, MQTT ingest, rollouts, HTTP API, /metrics."""
    from fleet.server import FleetServer, ServeConfig

    listen, broker, token_file = opts.pop("listen"), opts.pop("broker"), opts.pop("token_file")
    lines = token_file.read_text().splitlines() if token_file is not None else []
    entries = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    token_map = parse_tokens([*opts.pop("tokens"), *entries])
    host, port = parse_listen(listen)
    local = None
    if broker is None:
        from fleet.broker import start_local_broker

        local = start_local_broker()
        broker = local.url
        click.echo(f"started a local {local.kind} broker at {broker}", err=True)
    server = FleetServer(ServeConfig(broker=broker, host=host, port=port, tokens=token_map, **opts))
    if not token_map:
        click.echo(f"bootstrap admin token (shown once; set FLEETCTL_TOKEN): {next(iter(server.tokens))}", err=True)
    try:
        server.run()
    finally:
        if local is not None:
            local.stop()
