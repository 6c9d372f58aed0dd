"""Rollouts with REAL device agents over a real Mosquitto: downloads from the fleet manager's artifact
endpoint, verify, install, self-test, probation, commit — and self-test failures injected on one sku
trip the gate and roll back.

pi4 and jetson devices are `edge-agent run` processes. The esp device runs the agent in a thread of the
test process, because only there can its FaultPlan fail the self-test of digits@1.1.0 (the CLI has no
fault option yet); one in-process agent only, as several agents' threads parsing .npz headers at once
hit a CPython 3.11 ``compile()`` thread-safety bug (``AST constructor recursion depth mismatch``).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent.bundle import PrivateKey
from device_agent.updater import FaultPlan
from fleet.broker import LocalBroker
from tests.support.agent_harness import AgentThread, flash_device, package_tiny
from tests.support.fleet_harness import Harness, add_tiny_release, device_versions, rollout_finished, running_fleet, wait_until
from tests.support.powercut import start_agent

DEVICES = ("pi4-0", "pi4-1", "jetson-0", "jetson-1", "esp-0")


@pytest.fixture
def fleet(
    broker: LocalBroker, tmp_path: Path, key_files: tuple[Path, Path], tiny_models: dict[str, Path],
    release_key: PrivateKey,
) -> Iterator[Harness]:  # fmt: skip
    """5 real agents in 3 skus on digits 1.0.0; the esp one fails the self-test of digits@1.1.0."""
    initial = package_tiny(tiny_models, release_key, "1.0.0", 1)
    procs: list[subprocess.Popen[bytes]] = []
    threads: list[AgentThread] = []
    with running_fleet(broker.url, tmp_path / "fm", key_files[1], fleet="test") as h:
        try:
            for device in DEVICES:
                sku = device.split("-")[0]
                home = flash_device(tmp_path, initial, broker.url, key_files[1], device_id=device, sku=sku)
                if sku == "esp":
                    threads.append(AgentThread(home, faults=FaultPlan(selftest={"digits@1.1.0"})))
                else:
                    procs.append(start_agent(home))
            wait_until(lambda: sum(1 for d in h.api.get("/devices") if d["sku"] and d["status"] == "online") == 5,
                       60, "5 real agents registered")  # fmt: skip
            yield h
        finally:
            for t in threads:
                t.stop()
            for p in procs:
                p.send_signal(signal.SIGTERM)
                p.wait(30)


def test_real_agents_selftest_failures_on_one_sku_abort_and_roll_back_then_a_clean_release_completes(
    fleet: Harness, tmp_path: Path, tiny_models: dict[str, Path], release_key: PrivateKey
) -> None:
    h = fleet
    add_tiny_release(h, tmp_path, tiny_models, release_key, "1.1.0", 2)
    rid = h.api.post("/rollouts", {"release": "digits@1.1.0", "stages": ["50%", "100%"],
                                   "gates": {"failure": "20%", "retries": 0}})["id"]  # fmt: skip
    status = rollout_finished(h, rid)
    assert status["state"] == "ABORTED" and "failure threshold 20% tripped" in status["reason"]
    deps = {d["device_id"]: d for d in h.api.get(f"/rollouts/{rid}/deployments")}
    assert sorted(d.split("-")[0] for d in deps) == ["esp", "jetson", "pi4"]  # stage 1 sampled every sku
    esp = next(d for d in deps.values() if d["device_id"].startswith("esp"))
    assert esp["state"] == "ROLLED_BACK"  # the agent refused to switch after its self-test failed
    # a gate can trip while the other samples are still downloading: the agents finish installing, and
    # the fleet rolls each back once it reports the switch (an agent cannot roll back mid-install)
    wait_until(lambda: all(d["state"] == "ROLLED_BACK" for d in h.api.get(f"/rollouts/{rid}/deployments")), 60,
               "every sampled agent rolled back")  # fmt: skip
    wait_until(lambda: set(device_versions(h).values()) == {"1.0.0"}, 60, "every agent back on 1.0.0")

    add_tiny_release(h, tmp_path, tiny_models, release_key, "1.2.0", 3)
    rid = h.api.post("/rollouts", {"release": "digits@1.2.0", "stages": ["50%", "100%"]})["id"]
    status = rollout_finished(h, rid)
    assert status["state"] == "SUCCEEDED", (status["reason"], h.api.get(f"/rollouts/{rid}/deployments"))
    wait_until(lambda: set(device_versions(h).values()) == {"1.2.0"}, 60, "every agent on 1.2.0")
