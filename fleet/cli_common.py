"""Helpers shared by the ``fleetctl`` command modules: output (table or ``--json``) and the API client."""

from __future__ import annotations

import json
from typing import Any

import click

from fleet.client import ApiClient

DEFAULT_SERVER = "http://127.0.0.1:8080"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


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
