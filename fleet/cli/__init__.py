"""``fleetctl``: the fleet operator's command line. Thin: parse, one API call, print (or ``--json``).

One module per command group; ``simulate`` is imported only when asked for (it loads the simulator,
numpy and paho), so ``import fleet.cli`` stays light.
"""

from __future__ import annotations

import click

from device_agent import __version__
from device_agent.cliutil import debug_option
from fleet.cli.audit import audit
from fleet.cli.broker_config import broker_config
from fleet.cli.capture import capture
from fleet.cli.common import CONTEXT, DEFAULT_SERVER, LazyGroup
from fleet.cli.devices import devices
from fleet.cli.releases import releases
from fleet.cli.rollback import rollback
from fleet.cli.rollout import rollout
from fleet.cli.serve import serve
from fleet.cli.tokens import tokens
from fleet.cli.trust import trust
from fleet.cli.watch import watch

LAZY_COMMANDS = {"simulate": "fleet.sim.command:simulate_command"}


@click.group(cls=LazyGroup, context_settings=CONTEXT, lazy_subcommands=LAZY_COMMANDS)
@click.version_option(__version__, prog_name="fleetctl")
@click.option(
    "--server",
    envvar="FLEETCTL_SERVER",
    default=DEFAULT_SERVER,
    show_default=True,
    help="Fleet manager URL (env FLEETCTL_SERVER).",
)
@click.option(
    "--token", envvar="FLEETCTL_TOKEN", help="API token (env FLEETCTL_TOKEN, which keeps it out of the process list)."
)
@debug_option
@click.pass_context
def cli(ctx: click.Context, server: str, token: str | None) -> None:
    """Operate a fleet: registry, releases, staged rollouts gated on health, telemetry."""
    ctx.obj = {"server": server, "token": token}


for _command in (devices, releases, serve, broker_config, rollout, rollback, watch, tokens, audit, trust, capture):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="fleetctl")


__all__ = ["cli", "main"]
