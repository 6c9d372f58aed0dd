"""Shared CLI plumbing for edgetool, edge-agent and fleetctl: one-line errors, ``--debug`` tracebacks."""

from __future__ import annotations

from typing import Any

import click

from device_agent.errors import EdgefleetError


class Group(click.Group):
    """A click group that turns edgefleet errors into one clear line and exit status 1.

    With ``--debug`` on the group, the original exception propagates with its traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgefleetError as exc:
            if ctx.meta.get("edgefleet.debug"):
                raise
            raise click.ClickException(f"{exc} [{exc.code}]") from None


def debug_option(f: Any) -> Any:
    def set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        ctx.meta["edgefleet.debug"] = value
        return value

    return click.option(
        "--debug", is_flag=True, expose_value=False, is_eager=True, callback=set_debug, help="Show tracebacks."
    )(f)
