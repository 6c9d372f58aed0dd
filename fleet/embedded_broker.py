"""The embedded MQTT broker (amqtt, MQTT 3.1.1), for machines without a ``mosquitto`` binary.

Run as ``python -m fleet.embedded_broker --port N``; it serves on loopback until SIGTERM/SIGINT.
Only for first runs and tests: production points ``--broker`` at a real broker.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import click


async def _serve(host: str, port: int) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 20000}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"embedded broker listening on {host}:{port}", flush=True)
    await stop.wait()
    await broker.shutdown()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", required=True, type=int)
def main(host: str, port: int) -> None:
    """Serve an in-process amqtt broker on HOST:PORT."""
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(host, port))


if __name__ == "__main__":
    main()
