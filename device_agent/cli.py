"""``edge-agent``: the command the device's init system runs."""

from __future__ import annotations

import click

from device_agent import __version__
from device_agent._cli import Group, debug_option


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edge-agent")
@debug_option
def cli() -> None:
    """Run verified model bundles on this device.

    The agent's commands (run, status, predict, rollback) arrive with the device-agent issue;
    today this prints its version.
    """


def main() -> None:
    cli(prog_name="edge-agent")
