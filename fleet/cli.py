"""``fleetctl``: the fleet operator's command line."""

from __future__ import annotations

import click

from device_agent import __version__
from device_agent._cli import Group, debug_option


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fleetctl")
@debug_option
def cli() -> None:
    """Operate a fleet: registry, releases, staged rollouts, telemetry.

    Today: `simulate` (a fleet of simulated devices running the real agent code). The registry,
    releases and rollouts arrive with the fleet-manager issue.
    """


def _register() -> None:
    from fleet.simulate import simulate_command

    cli.add_command(simulate_command)


_register()


def main() -> None:
    cli(prog_name="fleetctl")
