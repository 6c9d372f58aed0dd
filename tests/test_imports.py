"""Device-side code stays lean: importing it never pulls in tensorflow, keras or onnx."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported_modules(code: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize(
    "code",
    [
        "import device_agent",
        "import device_agent.bundle, device_agent.protocol, device_agent.cli",
        "import device_agent.runtime.litert",
        "import device_agent.runtime.onnx",
        "import device_agent.mqtt",
    ],
)
def test_device_agent_never_imports_heavy_frameworks(code: str) -> None:
    modules = imported_modules(code)
    assert "device_agent" in modules
    assert not {m for m in modules if m.split(".")[0] in {"tensorflow", "keras", "onnx", "tf2onnx"}}


def test_plain_import_is_cheap() -> None:
    """``import device_agent`` loads neither numpy, paho nor cryptography."""
    modules = imported_modules("import device_agent")
    assert not {m for m in modules if m.split(".")[0] in {"numpy", "paho", "cryptography"}}


def test_toolchain_cli_does_not_import_tensorflow_to_verify() -> None:
    modules = imported_modules("import toolchain.cli")
    assert not {m for m in modules if m.split(".")[0] in {"tensorflow", "keras", "onnx"}}


def test_fleet_never_imports_toolchain_or_tensorflow() -> None:
    modules = imported_modules("import fleet.cli, fleet.server, fleet.api, fleet.rollout.runner")
    assert "fleet.server" in modules
    assert not {m for m in modules if m.split(".")[0] in {"toolchain", "tensorflow", "keras", "onnx", "tf2onnx"}}


def test_the_simulate_command_is_light_until_it_runs() -> None:
    """``fleet.sim.command`` (what ``fleetctl simulate`` registers) loads no numpy, paho or agent code."""
    modules = imported_modules("import fleet.sim.command")
    assert "fleet.sim.command" in modules
    heavy = {m for m in modules if m.split(".")[0] in {"numpy", "paho"}}
    assert not heavy | ({"device_agent.updater", "device_agent.agent", "fleet.sim.agents"} & modules)


def test_device_agent_knows_nothing_of_the_simulator() -> None:
    """No module under device_agent/ imports fleet (the simulator reaches the device code through hooks)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "device_agent"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(root.parent)}: {n}" for n in names if n.split(".")[0] == "fleet"]
    assert not offenders
