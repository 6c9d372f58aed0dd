"""What edgetool's command modules share: the key passphrase from the environment, path types, output helpers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from device_agent.bundle import Bundle, PrivateKey
from toolchain.bundles import summary

PASSPHRASE_ENV = "EDGEFLEET_KEY_PASSPHRASE"
PASSPHRASE_FILE_ENV = "EDGEFLEET_KEY_PASSPHRASE_FILE"
MODEL = click.Path(exists=True, path_type=Path)
DATA = click.Path(exists=False, path_type=Path)
F = TypeVar("F", bound=Callable[..., Any])


def passphrase() -> bytes | None:
    """The private-key passphrase from ``EDGEFLEET_KEY_PASSPHRASE``, or from the file named by
    ``EDGEFLEET_KEY_PASSPHRASE_FILE`` (its first line), if either is set; never from an argument.

    Raises:
        click.ClickException: the passphrase file cannot be read.
    """
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value.encode()
    path = os.environ.get(PASSPHRASE_FILE_ENV)
    if not path:
        return None
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise click.ClickException(f"cannot read the passphrase file {path}: {exc.strerror} [config]") from None
    return lines[0] if lines and lines[0] else None


def load_keys(paths: Sequence[str]) -> list[PrivateKey]:
    return [PrivateKey.load(p, passphrase()) for p in paths]


def options(decorators: Sequence[Callable[[F], F]]) -> Callable[[F], F]:
    """Apply a list of click options in order (the first one is listed first in ``--help``)."""

    def apply(f: F) -> F:
        for decorate in reversed(decorators):
            f = decorate(f)
        return f

    return apply


def echo_json(doc: Any) -> None:
    """Print ``doc`` as indented JSON with sorted keys (paths and the like as strings)."""
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


def echo_summary(bundle: Bundle, size: int | None = None) -> None:
    """Print what ``bundle`` holds, one labelled line per aspect."""
    for label, value in summary(bundle, size):
        click.echo(f"{label:>11}  {value}")
