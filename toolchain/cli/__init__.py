"""``edgetool``: the engineer's command line, one module per command group.

``keys`` (keygen, sign, verify, inspect), ``package``, ``build`` (convert, quantize, evaluate) and
``devices`` (profiles, check, flash), ``trust`` (init, update, show). Commands are thin: parse,
build the library object, make one call, print; edgefleet errors become one line with their reason
code (``device_agent.cliutil``).
"""

from __future__ import annotations

import click

from device_agent import __version__
from device_agent.cliutil import Group, debug_option
from toolchain.cli import build, devices, keys, package, trust


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgetool")
@debug_option
def cli() -> None:
    """Prepare models for edge devices: convert, quantize, evaluate, check against device profiles,
    then package, sign, verify and inspect signed bundles."""


for _group in (keys, package, build, devices, trust):
    for _command in _group.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="edgetool")
