"""Power-cut harness: SIGKILL a real ``edge-agent run`` process at chosen instants of a deployment,
check the device home as the next boot would find it, restart the agent and check it recovers.

Kill instants: after the agent reports a phase (DOWNLOADING, VERIFYING, INSTALLING, SELFTEST,
PROBATION, SUCCEEDED) plus a random delay within that step (the agent runs with
EDGE_AGENT_STEP_DELAY_S so each step lasts long enough to be hit), or at a random instant of
the first 250 ms after the command. After each kill, before restarting:

- ``state.json`` parses as a device state;
- every slot file that exists verifies (signatures and hashes: never half-written);
- the active slot verifies, or (only when the active slot was abandoned) the previous one does.

After restarting: the agent serves a prediction from a verified model and the deployment reaches
a terminal state (it resumed, or rolled back, or was refused) with nothing left pending.
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
from device_agent.config import ProbationSection
from device_agent.errors import EdgefleetError
from device_agent.home import Home, StateError
from tests.support.agent_harness import ArtifactServer, Watcher, flash_device, package_tiny, send_deploy

PHASES = ["DOWNLOADING", "VERIFYING", "INSTALLING", "SELFTEST", "PROBATION", "SUCCEEDED", "random"]
TERMINAL = {
    P.DeploymentState.SUCCEEDED,
    P.DeploymentState.ROLLED_BACK,
    P.DeploymentState.REJECTED,
    P.DeploymentState.FAILED,
}
STEP_DELAY_S = 0.3  # the agent pauses this long in each update step, so a kill can land inside it
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
    """Start `edge-agent run`; its log goes to HOME/../agent.log (appended), shown when a check fails."""
    exe = Path(sys.executable).parent / "edge-agent"
    home.run_file.unlink(missing_ok=True)
    with (home.root.parent / "agent.log").open("ab") as log:
        log.write(b"--- start\n")
        env = os.environ | {"EDGE_AGENT_STEP_DELAY_S": str(STEP_DELAY_S)}
        return subprocess.Popen(
            [str(exe), "run", "--home", str(home.root), "--log-level", "info"], stdout=log, stderr=log, env=env
        )


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


def run_power_cuts(
    n: int, seed: int, workdir: Path, broker_url: str, tiny: dict[str, Path], key: PrivateKey, pub: Path,
    progress: Callable[[KillResult], None] | None = None,
) -> list[KillResult]:  # fmt: skip
    rng = random.Random(seed)
    (workdir / "artifacts").mkdir(parents=True, exist_ok=True)
    server = ArtifactServer(workdir / "artifacts", throttle_bps=200_000)  # downloads take ~50 ms
    home = flash_device(
        workdir,
        package_tiny(tiny, key, "1.0.0", 1),
        broker_url,
        pub,
        probation=PROBATION,
        replay_rate=100.0,
        telemetry_interval_s=1.0,
    )
    trust = TrustStore.from_paths([pub])
    watcher = Watcher(broker_url)
    results: list[KillResult] = []
    try:
        for i in range(n):
            t0 = time.monotonic()
            target = PHASES[i % len(PHASES)]
            url, sha, size = server.publish(f"v{i + 2}.efb", package_tiny(tiny, key, f"1.{i + 1}.0", i + 2))
            proc = start_agent(home)
            wait_serving(home, proc)
            if i == 0:  # the device's first connection creates its session; later deploys may wait queued in it
                watcher.wait(lambda: watcher.status.get("dev-1") == "online")
            dep = send_deploy(broker_url, "test", "dev-1", url, sha, size)
            _wait_kill_point(watcher, dep, target, rng)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            watcher.drain()  # events the agent published before it died
            states = watcher.states(dep)
            problem = check_home(home, trust)
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
            result = KillResult(i, target, states[-1] if states else "none", problem, final, time.monotonic() - t0)
            results.append(result)
            if progress:
                progress(result)
    finally:
        watcher.close()
        server.close()
    return results


def _wait_kill_point(watcher: Watcher, dep: str, target: str, rng: random.Random) -> None:
    if target == "random":
        time.sleep(rng.uniform(0.0, 0.25))  # the steps before probation take ~50-100 ms
        return
    with contextlib.suppress(TimeoutError):  # the deployment ended before that phase: kill wherever it is
        watcher.wait(lambda: target in watcher.states(dep), timeout=20)
    time.sleep(rng.uniform(0.0, STEP_DELAY_S))
