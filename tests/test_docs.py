"""Docs stay true: every command a user meets in README.md exists, with every option it shows."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from device_agent.cli import cli as edge_agent
from fleet.cli import cli as fleetctl
from toolchain.cli import cli as edgetool

ROOT = Path(__file__).resolve().parent.parent
CLIS: dict[str, click.Group] = {"edgetool": edgetool, "edge-agent": edge_agent, "fleetctl": fleetctl}


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("$ "):
                argv = shlex.split(line[2:].split(" #")[0].rstrip(" &"))
                if argv and argv[0] in CLIS:
                    commands.append(argv)
    return commands


def test_readme_shows_commands() -> None:
    assert len(readme_commands()) >= 8


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a[:2]))
def test_readme_command_exists_with_its_options(argv: list[str]) -> None:
    command: click.Command | None = CLIS[argv[0]]
    words = argv[1:]
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):  # fleetctl rollout start
        name, words = words[0], words[1:]
        parent, command = command, command.get_command(click.Context(command), name)
        assert command is not None, f"{parent.name} has no command {name!r}"
    assert command is not None
    known = {opt for p in command.params for opt in getattr(p, "opts", [])}
    used = {a.split("=")[0] for a in argv[2:] if a.startswith("--")}
    assert used <= known, f"{' '.join(argv[:2])}: unknown option(s) {used - known}"


@pytest.mark.parametrize("name", sorted(CLIS))
def test_every_command_has_help(name: str) -> None:
    group = CLIS[name]
    ctx = click.Context(group)
    for sub in group.list_commands(ctx):
        assert (group.get_command(ctx, sub).help or "").strip(), f"{name} {sub} has no help text"
