"""The demo's plumbing: options, how commands are shown, and the processes it starts and stops.

Every process lives in a process group of its own; ``Processes.stop_all`` stops them newest first
(the process's stop signal, then SIGKILL), and a second Ctrl-C while stopping kills at once.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python scripts/demo.py` from anywhere: the project's packages

from fleet.broker import LocalBroker  # noqa: E402

BIN = Path(sys.executable).parent
DEFAULT_WORKDIR = ROOT / "build" / "demo"
FLEET = "demo"
SKUS = ("a", "b", "c")
BAD_SKU = "c"
TF_NOISE = re.compile(
    r"^([IWE]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl|To enable the following instructions"
    r"|INFO: Created TensorFlow Lite|fully_quantize:)"
)


class DemoError(Exception):
    """A step failed; the message says which and where its log is."""


@dataclass(frozen=True)
class Options:
    devices: int
    workdir: Path
    keep_running: bool
    fast: bool
    models: Path | None
    loop: bool = False  # the field data loop (scripts/demo_loop.py) instead of the rollout story

    @property
    def bake_s(self) -> float:  # seconds each stage is watched by the health gate
        return 6.0 if self.fast else 12.0

    @property
    def settle_s(self) -> float:  # seconds before a fresh model's telemetry counts in the health gate
        return 3.0 if self.fast else 5.0

    @property
    def telemetry_s(self) -> float:
        return 1.0 if self.fast else 2.0


# --- output -------------------------------------------------------------------------------------


def rel(path: Path) -> str:
    """``path`` as a user in the repository root would type it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def say(title: str) -> None:
    print(f"\n== {title}", flush=True)


def show(argv: list[str], background: bool = False) -> None:
    """Print a command as typed, wrapped before options like the README does."""
    words = [shlex.quote(w) for w in argv] + (["&"] if background else [])
    lines, line = [], "$"
    for word in words:
        if len(line) + len(word) > 100 and word.startswith("-") and line.strip() != "$":
            lines.append(line + " \\")
            line = "     "
        line += " " + word
    print("\n".join([*lines, line]), flush=True)


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[Any]
    log: Path | None
    stop_signal: int = signal.SIGTERM


class Processes:
    """Every process the demo started. ``stop_all`` stops them newest first, each with its whole group."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def spawn(self, name: str, argv: list[str], log: Path | None, stop_signal: int = signal.SIGTERM) -> Child:
        """Start ``argv`` in a new session (so a terminal's Ctrl-C reaches only the demo, which stops it)."""
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": os.environ.get("COLUMNS", str(shutil.get_terminal_size((120, 40)).columns)),
        }
        out: Any = subprocess.PIPE if log is None else log.open("ab")
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, text=log is None
        )
        child = Child(name, proc, log, stop_signal)
        self.children.append(child)
        if log is not None:
            out.close()
        return child

    def adopt_broker(self, broker: LocalBroker) -> None:
        self.children.append(Child(f"{broker.kind} broker", broker.process, broker.log_path))

    def check_alive(self) -> None:
        """Raises: DemoError when a background process has died."""
        for child in self.children:
            code = child.proc.poll()
            if code is not None and child.log is not None:
                tail = child.log.read_text(errors="replace")[-1500:] if child.log.exists() else ""
                raise DemoError(f"{child.name} exited with status {code}; log {rel(child.log)}:\n{tail}")

    def stop_all(self, timeout: float = 20.0) -> None:
        """Warm (the process's stop signal, then wait), then cold; a Ctrl-C meanwhile goes cold at once."""
        previous = signal.signal(signal.SIGINT, lambda *_: self._kill_all())
        try:
            for child in reversed(self.children):
                if child.proc.poll() is None:
                    print(f"   stopping {child.name} (pid {child.proc.pid})", flush=True)
                    _signal_group(child.proc, child.stop_signal)
                    try:
                        child.proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        _signal_group(child.proc, signal.SIGKILL)
                        child.proc.wait()
                _signal_group(child.proc, signal.SIGKILL)  # anything its group left behind
            self.children.clear()
        finally:
            signal.signal(signal.SIGINT, previous)

    def _kill_all(self) -> None:
        for child in self.children:
            _signal_group(child.proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(proc.pid, sig)


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
