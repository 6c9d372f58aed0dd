"""``fleetctl broker-config``: a Mosquitto config, password file and ACL for a fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


@click.command("broker-config")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory to write.")
@click.option("--fleet", default="default", show_default=True)
@click.option("--device", "devices", multiple=True, help="A device id (its MQTT username); repeatable.")
@click.option("--devices-file", type=click.File(), help="A file with one device id per line.")
@click.option(
    "--manager",
    "managers",
    multiple=True,
    default=["fleetctl"],
    show_default=True,
    help="A fleet manager's MQTT username; one per `serve` process (client ids are usernames). Repeatable.",
)
@click.option("--reader", "readers", multiple=True, help="A read-only dashboard user (status/info/telemetry).")
@click.option("--port", type=int, default=None, help="Listener port (default 1883, or 8883 with --tls).")
@click.option("--tls", is_flag=True, help="Also write a private CA and a server certificate; listen with TLS.")
@click.option("--hostname", default="localhost", show_default=True, help="Broker host name for the TLS certificate.")
@click.option(
    "--message-limit",
    type=click.IntRange(1024, 256 << 20),
    default=256 << 10,
    show_default=True,
    help="Largest MQTT message payload in bytes; a client sending a larger one is disconnected.",
)
@click.option("--run-as", help="Account mosquitto drops to (its `user` setting); it must read passwd and acl.")
def broker_config(**opts: Any) -> None:
    """Write a Mosquitto config, password file and ACL for a fleet (and TLS material with --tls)."""
    from fleet.brokerconfig import BrokerConfigSpec, write

    out, devices_file, port = opts.pop("out"), opts.pop("devices_file"), opts.pop("port")
    devices = [*opts.pop("devices"), *(line.strip() for line in (devices_file or []) if line.strip())]
    port = port or (8883 if opts["tls"] else 1883)
    readers, managers = tuple(opts.pop("readers")), tuple(opts.pop("managers"))
    spec = BrokerConfigSpec(devices=tuple(devices), readers=readers, managers=managers, port=port, **opts)
    creds = write(spec, out)
    tls_files = ", ca.crt, server.crt, server.key" if spec.tls else ""
    click.echo(f"wrote {out}/mosquitto.conf, passwd, acl and credentials.txt ({len(creds)} users){tls_files}")
    click.echo(f"run: mosquitto -c {out.resolve()}/mosquitto.conf")
