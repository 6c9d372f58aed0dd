"""Helpers shared by the ``fleetctl`` command modules: output (table or ``--json``), the API client, option
lists, and the lazy group that imports a command's module only when that command is asked for."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import click

from device_agent.cliutil import Group
from fleet.client import ApiClient

DEFAULT_SERVER = "http://127.0.0.1:8080"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
F = TypeVar("F", bound=Callable[..., Any])


class LazyGroup(Group):
    """A group whose ``lazy_subcommands`` (name → ``"module:attribute"``) are imported on first use
    (click's documented LazyGroup pattern), so ``import fleet.cli`` stays light."""

    def __init__(self, *args: Any, lazy_subcommands: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = dict(lazy_subcommands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_subcommands])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands:
            return self._load(cmd_name)
        return super().get_command(ctx, cmd_name)

    def _load(self, cmd_name: str) -> click.Command:
        module, _, attribute = self.lazy_subcommands[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy_subcommands[cmd_name]} is not a click command")
        return command


def with_options(options: Sequence[Callable[[F], F]]) -> Callable[[F], F]:
    """Apply click options from a list, first one on top (as if written as decorators in that order)."""

    def apply(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


def emit(data: Any, as_json: bool, columns: list[str] | None = None) -> None:
    """JSON, or an aligned table of ``columns`` for lists, or ``key: value`` lines for one object."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif isinstance(data, list):
        cols = columns or (sorted(data[0]) if data else [])
        rows = [[_cell(r.get(c)) for c in cols] for r in data]
        widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(cols)]
        for line in [[c.upper() for c in cols], *rows]:
            click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    else:
        for key in columns or sorted(data):
            click.echo(f"{key}: {_cell(data.get(key))}")


def _cell(value: Any) -> str:
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True, default=str)[:80]
    return "" if value is None else str(value)


def api(ctx: click.Context) -> ApiClient:
    obj: dict[str, Any] = ctx.find_root().obj
    return ApiClient(obj["server"], obj["token"])
