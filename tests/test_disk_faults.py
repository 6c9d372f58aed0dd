"""Disk faults at every update step: the device home on a real tmpfs is filled (to 0 or 64 KiB free)
when a deployment reports each step. Whatever the step, the agent never stops, the deployment ends
in a terminal state with a reason (or succeeds where the space left was enough), nothing stays
pending, the active model keeps serving, and once the space is back the next release succeeds
without a restart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device_agent import protocol as P
from device_agent.bundle import PrivateKey
from fleet.broker import LocalBroker
from tests.support.agent_harness import (
    TERMINAL,
    AgentThread,
    ArtifactServer,
    Watcher,
    flash_device,
    package_tiny,
    send_deploy,
)
from tests.support.diskfault import STEPS, FillAtStep, RunningAgent
from tests.support.diskfs import fill

S = P.DeploymentState
X = np.zeros((1, 8, 8, 1), np.float32)


@pytest.fixture(scope="module")
def bundles(tiny_models: dict[str, Path], release_key: PrivateKey) -> list[bytes]:
    return [package_tiny(tiny_models, release_key, f"{n}.0.0", n) for n in (1, 2, 3)]


def deploy(broker: LocalBroker, server: ArtifactServer, data: bytes, watcher: Watcher) -> P.DeploymentEvent:
    url, sha, size = server.publish(f"r{len(watcher.events)}.efb", data)
    return watcher.wait_event(send_deploy(broker.url, "test", "dev-1", url, sha, size), TERMINAL)


@pytest.mark.parametrize("leave", [0, 64 << 10])
@pytest.mark.parametrize("step", STEPS)
def test_a_disk_filled_at_any_step_ends_the_deployment_with_a_reason_and_the_agent_lives_on(
    step: str, leave: int, fs, broker, server, bundles, key_files
) -> None:
    home = flash_device(fs, bundles[0], broker.url, key_files[1])
    hooks = FillAtStep(fs, step, leave)
    running = RunningAgent(home, hooks)
    watcher = Watcher(broker.url)
    try:
        watcher.wait(lambda: watcher.status.get("dev-1") == "online")
        ev = deploy(broker, server, bundles[1], watcher)
        assert hooks.filler is not None, f"the disk was never filled (states {watcher.states(ev.deployment_id)})"
        assert ev.state is S.SUCCEEDED or ev.reason, ev  # every other ending says why
        n = len(watcher.telemetry)
        watcher.wait(lambda: len(watcher.telemetry) >= n + 2)  # the loop and the MQTT session go on
        assert running.alive() and running.agent.updater.state.pending is None
        serving = running.agent.core.active_engine().predict({"image": X}).model.manifest.version
        assert serving == ("2.0.0" if ev.state is S.SUCCEEDED else "1.0.0")
        assert not list(home.downloads.glob("*.part"))
        hooks.free()
        assert deploy(broker, server, bundles[2], watcher).state is S.SUCCEEDED  # no restart needed
        assert running.alive()
    finally:
        running.stop()
        watcher.close()


def test_a_telemetry_burst_offline_on_a_full_disk_is_dropped_and_counted(fs, broker, bundles, key_files) -> None:
    home = flash_device(fs, bundles[0], broker.url, key_files[1])
    agent = AgentThread(home, outages=True)
    watcher = Watcher(broker.url)
    try:
        agent.wait_connected()
        filler = fill(fs, 0)
        agent.agent.core.telemetry_interval = 0.05  # a burst: twenty points a second
        agent.go_offline(20.0)  # long enough for the burst to meet the full disk, whatever the load
        watcher.wait(lambda: agent.agent.spool.dropped >= 5, timeout=30)
        filler.unlink()
        agent.agent.core.telemetry_interval = 0.5
        watcher.wait(lambda: any(t.values.get("spool_dropped", 0) >= 5 for _, t in watcher.telemetry), timeout=60)
        assert agent.thread.is_alive()
    finally:
        agent.stop()
        watcher.close()
