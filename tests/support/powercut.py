"""Power-cut harness: SIGKILL a real ``edge-agent run`` process at chosen instants of a deployment,
check the device home as the next boot would find it, restart the agent and check it recovers.

Kill instants: after the agent reports a phase (DOWNLOADING, VERIFYING, INSTALLING, SELFTEST,
PROBATION, SUCCEEDED) plus a random delay within that step (the agent runs as ``tests.support.slow_agent``,
whose update hooks make each step last long enough to be hit), or at a random instant of
the first 250 ms after the command, or (TRUST) within 60 ms of a ``cmd/trust`` carrying a root-key
rotation, while the agent verifies the chain and replaces ``trust/trust.json``. After each kill,
before restarting:

- ``state.json`` parses as a device state;
- every slot file that exists verifies (signatures and hashes: never half-written);
- the active slot verifies, or (only when the active slot was abandoned) the previous one does.

- ``trust/trust.json`` verifies, and holds the version before the update or the one after it.

After restarting: the agent serves a prediction from a verified model and the deployment reaches
a terminal state (it resumed, or rolled back, or was refused) with nothing left pending; after a
TRUST kill, the re-sent chain brings the device to the new version.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device_agent import protocol as P
from device_agent.api import AgentClient
from device_agent.bundle import PrivateKey, TrustStore, verify_bundle
from device_agent.bundle.trust import TRUST_NAME, verify_initial
from device_agent.config import ProbationSection
from device_agent.errors import EdgefleetError, StateError, TrustError
from device_agent.home import Home
from tests.support.agent_harness import (
    TERMINAL,
    ArtifactServer,
    Watcher,
    flash_device,
    package_tiny,
    send_command,
    send_deploy,
)
from tests.support.slow_agent import STEP_DELAY_S
from tests.support.trust_chain import TrustRepo

REPO = Path(__file__).resolve().parents[2]  # so that `python -m tests.support.slow_agent` finds this tree

PHASES = ["DOWNLOADING", "VERIFYING", "INSTALLING", "SELFTEST", "PROBATION", "SUCCEEDED", "random", "TRUST"]
PROBATION = ProbationSection(min_inferences=30, seconds=3.0, max_error_rate=0.05, max_latency_ratio=0.0)


@dataclass
class KillResult:
    index: int
    target: str  # the phase aimed at
    killed_after: str  # the last state the agent had reported for the deployment
    problem: str  # "" when every check held
    final: str  # the deployment's terminal state after the restart
    seconds: float


def start_agent(home: Home) -> subprocess.Popen[bytes]:
    """Start `edge-agent run` with slow update steps (``tests.support.slow_agent``); its log goes to
    HOME/../agent.log (appended), shown when a check fails."""
    home.run_file.unlink(missing_ok=True)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    with (home.root.parent / "agent.log").open("ab") as log:
        log.write(b"--- start\n")
        argv = [sys.executable, "-m", "tests.support.slow_agent", "--home", str(home.root), "--log-level", "info"]
        return subprocess.Popen(argv, stdout=log, stderr=log, env=os.environ | {"PYTHONPATH": path})


def log_tail(home: Home, lines: int = 15) -> str:
    try:
        return "\n".join((home.root.parent / "agent.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_serving(home: Home, proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    """Wait until the restarted agent answers a prediction; returns the version it serves."""
    deadline = time.monotonic() + timeout
    x = np.zeros((1, 8, 8, 1), np.float32)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with status {proc.returncode}")
        info = home.read_run_info()
        if info and info.get("api"):
            try:
                return str(AgentClient(str(info["api"]), timeout=5).predict({"image": x})["model"]["version"])
            except EdgefleetError:
                pass
        time.sleep(0.05)
    raise TimeoutError("agent did not serve in time")


def check_home(home: Home, trust: TrustStore) -> str:
    """The invariants a boot relies on; returns a description of the first violation, or ""."""
    try:
        state = home.load_state()
    except StateError as exc:
        return f"state.json invalid: {exc}"
    verified = {}
    for slot, path in home.slots():
        if path.exists():
            try:
                verify_bundle(path.read_bytes(), trust)
                verified[slot] = True
            except EdgefleetError as exc:
                return f"slot {slot} holds a bundle that does not verify: {exc}"
    if state.active not in verified and not (state.previous in verified and state.probation):
        return f"active slot {state.active} has no verified bundle"
    return ""


@dataclass(frozen=True)
class Rig:
    """What a power-cut run needs: a scratch directory, a broker, the tiny models and a release key pair."""

    workdir: Path
    broker_url: str
    tiny: dict[str, Path]
    key: PrivateKey
    pub: Path


@dataclass
class _Run:
    rig: Rig
    rng: random.Random
    server: ArtifactServer
    home: Home
    trust: TrustStore
    watcher: Watcher
    repo: TrustRepo  # the device's trust metadata; its first release key is the rig's


def run_power_cuts(
    n: int, seed: int, rig: Rig, progress: Callable[[KillResult], None] | None = None
) -> list[KillResult]:
    """``n`` kills of a real agent at phases taken in turn (``PHASES``), each checked and recovered from."""
    (rig.workdir / "artifacts").mkdir(parents=True, exist_ok=True)
    server = ArtifactServer(rig.workdir / "artifacts", throttle_bps=200_000)  # downloads take ~50 ms
    repo = TrustRepo(time.time(), releases=[rig.key, PrivateKey.generate()])
    home = flash_device(
        rig.workdir,
        package_tiny(rig.tiny, rig.key, "1.0.0", 1),
        rig.broker_url,
        rig.pub,
        probation=PROBATION,
        replay_rate=100.0,
        telemetry_interval_s=1.0,
        trust_metadata=repo.write(rig.workdir / "trust")[0],
    )
    trust = TrustStore.from_paths([rig.pub])
    run = _Run(rig, random.Random(seed), server, home, trust, Watcher(rig.broker_url), repo)
    results: list[KillResult] = []
    try:
        for i in range(n):
            result = _one_cut(run, i)
            results.append(result)
            if progress:
                progress(result)
    finally:
        run.watcher.close()
        server.close()
    return results


def _one_cut(run: _Run, i: int) -> KillResult:
    """Deploy version ``i + 2``, kill the agent at ``PHASES[i]``, check the home, restart, wait for the end."""
    t0 = time.monotonic()
    rig, home, watcher = run.rig, run.home, run.watcher
    target = PHASES[i % len(PHASES)]
    if target == "TRUST":
        return _trust_cut(run, i, t0)
    url, sha, size = run.server.publish(f"v{i + 2}.efb", package_tiny(rig.tiny, rig.key, f"1.{i + 1}.0", i + 2))
    proc = start_agent(home)
    wait_serving(home, proc)
    if i == 0:  # the device's first connection creates its session; later deploys may wait queued in it
        watcher.wait(lambda: watcher.status.get("dev-1") == "online")
    dep = send_deploy(rig.broker_url, "test", "dev-1", url, sha, size)
    _wait_kill_point(watcher, dep, target, run.rng)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    watcher.drain()  # events the agent published before it died
    states = watcher.states(dep)
    problem = check_home(home, run.trust)
    proc = start_agent(home)
    final = "?"
    try:
        wait_serving(home, proc)
        final = watcher.wait_event(dep, TERMINAL, timeout=60).state.value
        if not problem and home.load_state().pending is not None:
            problem = "a deployment is still pending after reaching a terminal state"
    except (TimeoutError, RuntimeError) as exc:
        problem = problem or f"after restart: {exc}\nagent log:\n{log_tail(home)}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return KillResult(i, target, states[-1] if states else "none", problem, final, time.monotonic() - t0)


def _wait_kill_point(watcher: Watcher, dep: str, target: str, rng: random.Random) -> None:
    if target == "random":
        time.sleep(rng.uniform(0.0, 0.25))  # the steps before probation take ~50-100 ms
        return
    with contextlib.suppress(TimeoutError):  # the deployment ended before that phase: kill wherever it is
        watcher.wait(lambda: target in watcher.states(dep), timeout=20)
    time.sleep(rng.uniform(0.0, STEP_DELAY_S))


def _trust_cut(run: _Run, i: int, t0: float) -> KillResult:
    """Send a root-key rotation, kill the agent while it applies it, check trust.json, restart, re-send."""
    home, held = run.home, run.repo.current.version
    run.repo.rotate_root()
    proc = start_agent(home)
    wait_serving(home, proc)
    _send_trust(run, f"trust-{i}")
    time.sleep(run.rng.uniform(0.0, 0.06))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    found = _trust_version(home)
    problem = check_home(home, run.trust)
    if found not in (held, held + 1):
        problem = problem or f"trust.json after the kill: {found} (expected version {held} or {held + 1})"
    proc = start_agent(home)
    try:
        wait_serving(home, proc)
        _send_trust(run, f"trust-{i}-again")
        deadline = time.monotonic() + 30
        while _trust_version(home) != held + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        if _trust_version(home) != held + 1:
            problem = problem or f"trust.json stays at {_trust_version(home)} after the chain was re-sent"
    except (TimeoutError, RuntimeError) as exc:
        problem = problem or f"after restart: {exc}\nagent log:\n{log_tail(home)}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    after = {held: "trust-old", held + 1: "trust-new"}.get(found, "trust-unusable") if isinstance(found, int) else ""
    final = "TRUSTED" if not problem else "?"
    return KillResult(i, "TRUST", after or "trust-unusable", problem, final, time.monotonic() - t0)


def _send_trust(run: _Run, request_id: str) -> None:
    cmd = P.TrustCommand(request_id=request_id, chain=tuple(run.repo.versions[-P.MAX_TRUST_CHAIN :]))
    send_command(run.rig.broker_url, "test", "dev-1", cmd)


def _trust_version(home: Home) -> str | int:
    """The version trust.json holds, or why it is unusable."""
    try:
        return verify_initial((home.trust / TRUST_NAME).read_bytes()).version
    except (OSError, TrustError) as exc:
        return f"unusable: {exc}"
