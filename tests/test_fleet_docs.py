"""docs/operations.md documents every fleetctl command and every option of serve, rollout start and
broker-config: a command or setting added without docs fails here."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from fleet.cli import cli

DOC = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()


def commands(group: click.Group, prefix: str = "fleetctl") -> list[tuple[str, click.Command]]:
    """Every command under ``group``, lazily registered ones (``simulate``) included."""
    out = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        out.append((f"{prefix} {name}", cmd))
        if isinstance(cmd, click.Group):
            out += commands(cmd, f"{prefix} {name}")
    return out


@pytest.mark.parametrize(("name", "cmd"), commands(cli), ids=lambda x: x if isinstance(x, str) else "")
def test_every_command_is_documented(name: str, cmd: click.Command) -> None:
    assert name in DOC, f"{name} is not in docs/operations.md"


@pytest.mark.parametrize("path", [("serve",), ("rollout", "start"), ("broker-config",)])
def test_every_option_is_documented(path: tuple[str, ...]) -> None:
    cmd: click.Command = cli
    for part in path:
        cmd = cmd.commands[part]  # type: ignore[attr-defined]
    options = [o for p in cmd.params for o in p.opts if o.startswith("--") and o not in ("--help", "--json")]
    missing = [o for o in options if f"`{o}" not in DOC]
    assert not missing, f"fleetctl {' '.join(path)}: undocumented {missing}"
