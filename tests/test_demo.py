"""`make demo` (scripts/demo.py): it tells the whole story and exits 0, and Ctrl-C leaves no process behind.

Both reuse the session's digits-cnn build (``--models``) so the model is trained once per test run; the
demo still quantizes, packages, signs and runs the broker, fleet manager and simulated devices itself.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fleet.broker import mosquitto_binary
from tests.support.processes import alive, descendants, processes_mentioning

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def start_demo(workdir: Path, models: Path, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    """The demo with its output collected line by line in a thread (so its pipe never fills)."""
    argv = [sys.executable, "scripts/demo.py", "--fast", "--models", str(models), "--workdir", str(workdir), *extra]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def test_demo_tells_the_whole_story_and_exits_0(tmp_path: Path, digits_cnn: dict[str, Path]) -> None:
    workdir = tmp_path / "demo"
    proc, lines = start_demo(workdir, digits_cnn["keras"].parent, "--devices", "9")
    try:
        code = proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    time.sleep(0.5)  # the reader thread drains the last lines
    out = "".join(lines)
    assert code == 0, out[-4000:]
    for expected in (
        "$ edgetool quantize",
        "▶ int8",  # the quantization report's table
        "$ edgetool package",
        "broker: mosquitto at mqtt://" if mosquitto_binary() else "broker: the embedded amqtt broker",
        "$ fleetctl serve",
        "$ fleetctl simulate --devices 9",
        "--fault digits@1.2.0:c=slow",
        "9/9 devices online on 1.0.0",
        "stage 1/3 (10%: 3 devices)",
        "stage 2/3",
        "stage 3/3 (100%: 9 devices)",
        "rollout 1 digits@1.1.0: SUCCEEDED",
        "rollout 2 digits@1.2.0: ABORTED, automatic rollback because: failure threshold 10% tripped",
        "[probation-latency] by the device's own gate",
        "final versions by sku: a → 1.1.0 ×3, b → 1.1.0 ×3, c → 1.1.0 ×3",
        "/docs",
        "/metrics",
        "/ui (token demo-",
        "mosquitto_sub -h 127.0.0.1",
        "every process it started has stopped",
    ):
        assert expected in out, f"{expected!r} not in the demo's output:\n{out[-4000:]}"
    assert out.index("web console: http://127.0.0.1:") < out.index("start the fleet manager")  # from the start
    assert not processes_mentioning(str(workdir))


def test_ctrl_c_stops_every_process_the_demo_started(tmp_path: Path, digits_cnn: dict[str, Path]) -> None:
    workdir = tmp_path / "demo"
    proc, lines = start_demo(workdir, digits_cnn["keras"].parent, "--devices", "6")
    try:
        deadline = time.monotonic() + 300
        while not any("live progress" in line for line in lines):  # broker, serve and simulate all running
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.2)
        children = descendants(proc.pid)
        assert len(children) >= 3, children  # the broker, fleetctl serve, fleetctl simulate
        proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends the foreground process
        code = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    out = "".join(lines)
    assert code == 130, out[-3000:]
    assert "interrupted: stopping every process the demo started" in out
    assert "stopping simulate" in out and "stopping serve" in out
    assert [pid for pid in children if alive(pid)] == []
    assert processes_mentioning(str(workdir)) == []
