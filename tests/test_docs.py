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


def readme_lines() -> list[list[str]]:
    """Every command line (``$ …``) of every fenced code block in README.md, as argv."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("$ "):
                argv = shlex.split(line[2:].split(" #")[0].rstrip(" &"))
                if argv:
                    commands.append(argv)
    return commands


def readme_commands() -> list[list[str]]:
    return [argv for argv in readme_lines() if argv[0] in CLIS]


def test_readme_shows_commands() -> None:
    assert len(readme_commands()) >= 8
    assert {argv[0] for argv in readme_commands()} == set(CLIS)  # all three command lines


def test_readme_make_targets_and_demo_options_exist() -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    demo = (ROOT / "scripts" / "demo.py").read_text()
    demo_options = set(re.findall(r'add_argument\("(--[a-z-]+)"', demo))
    seen = 0
    for argv in readme_lines():
        words = [w for a in argv for w in shlex.split(a.partition("=")[2]) if a.startswith("DEMO_ARGS=")]
        if argv[0] == "make":
            seen += 1
            assert {a for a in argv[1:] if "=" not in a} <= targets, argv
        if len(argv) > 1 and argv[1] == "scripts/demo.py":
            words += argv[2:]
        assert {w for w in words if w.startswith("--")} - {"--help"} <= demo_options, argv
    assert seen >= 2


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
