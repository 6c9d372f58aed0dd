"""The lean simulator (many devices per process, real agent code) against a real Mosquitto and a real
fleet manager: a clean rollout completes; a release whose self-test fails on one sku trips the failure
gate, and every device ends on its previous version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent.bundle import PrivateKey
from device_agent.config import ProbationSection
from device_agent.errors import ConfigError
from fleet.broker import LocalBroker
from fleet.simulate import Fault, SimulationConfig, pick_mode
from fleet.simulate_lean import Strand
from fleet.simulate_procs import LeanSimulation, merge_summaries
from tests.support.agent_harness import package_tiny
from tests.support.fleet_harness import Harness, add_tiny_release, device_versions, rollout_finished, running_fleet, wait_until

DEVICES = 120
SKUS = ("pi4", "jetson", "esp")
# replayed self-test inputs are not the calibration distribution (drift), and latency in a process shared
# by 60 devices measures its load: those health limits are lifted, as in bench/fleet_rollout.py
SIM_GATES = {"max_psi": 1e9, "max_p95_ratio": 1e9}


@pytest.fixture
def fleet(
    broker: LocalBroker, tmp_path: Path, key_files: tuple[Path, Path], tiny_models: dict[str, Path],
    release_key: PrivateKey,
) -> Iterator[tuple[Harness, LeanSimulation]]:  # fmt: skip
    initial = tmp_path / "digits-1.0.0.efb"
    initial.write_bytes(package_tiny(tiny_models, release_key, "1.0.0", 1))
    config = SimulationConfig(
        devices=DEVICES, fleet="test", broker=broker.url, bundle=initial, trust=[key_files[1]], skus=SKUS,
        faults=(Fault.parse("digits@1.1.0:esp=selftest"),), workdir=tmp_path / "sim", telemetry_interval_s=30.0,
        replay_rate=2.0, probation=ProbationSection(min_inferences=1000, seconds=1.0, max_error_rate=0.05),
    )  # fmt: skip
    with running_fleet(broker.url, tmp_path / "fm", key_files[1], fleet="test") as h:
        sim = LeanSimulation(config, processes=2)
        sim.start(timeout=120)
        try:
            wait_until(lambda: sum(1 for d in h.api.get("/devices") if d["sku"] and d["status"] == "online") == DEVICES,
                       60, "every simulated device registered")  # fmt: skip
            yield h, sim
        finally:
            sim.stop()


def test_lean_simulator_clean_rollout_then_selftest_fault_rolls_back(
    fleet: tuple[Harness, LeanSimulation], tmp_path: Path, tiny_models: dict[str, Path], release_key: PrivateKey
) -> None:
    h, sim = fleet
    add_tiny_release(h, tmp_path, tiny_models, release_key, "1.1.0", 2)  # fails its self-test on esp devices
    add_tiny_release(h, tmp_path, tiny_models, release_key, "1.2.0", 3)
    rid = h.api.post("/rollouts", {"release": "digits@1.2.0", "stages": ["5%", "25%", "50%", "100%"],
                                   "gates": SIM_GATES})["id"]  # fmt: skip
    status = rollout_finished(h, rid)
    assert status["state"] == "SUCCEEDED", status["reason"]
    wait_until(lambda: set(device_versions(h).values()) == {"1.2.0"}, 60, "every device on 1.2.0")
    assert sim.summary()["versions"] == {"1.2.0": DEVICES}

    add_tiny_release(h, tmp_path, tiny_models, release_key, "1.3.0", 4)
    rid = h.api.post("/rollouts", {"release": "digits@1.3.0", "stages": ["25%", "50%", "100%"],
                                   "gates": {"failure": "5%", "retries": 0, **SIM_GATES}})["id"]  # fmt: skip
    assert rollout_finished(h, rid)["state"] == "SUCCEEDED"  # the fault is 1.1.0's, which nobody installs now


def test_lean_simulator_selftest_fault_on_one_sku_trips_the_gate_and_every_device_is_back(
    fleet: tuple[Harness, LeanSimulation], tmp_path: Path, tiny_models: dict[str, Path], release_key: PrivateKey
) -> None:
    h, sim = fleet
    add_tiny_release(h, tmp_path, tiny_models, release_key, "1.1.0", 2)
    rid = h.api.post("/rollouts", {"release": "digits@1.1.0", "stages": ["25%", "50%", "75%", "100%"],
                                   "gates": {"failure": "10%", "retries": 0, **SIM_GATES}})["id"]  # fmt: skip
    status = rollout_finished(h, rid)
    assert status["state"] == "ABORTED" and "failure threshold 10% tripped" in status["reason"]
    deps = h.api.get(f"/rollouts/{rid}/deployments")
    assert {d["device_id"] for d in deps if d["reason"] == "selftest"}, "esp devices failed their self-test"
    wait_until(lambda: all(d["state"] in ("ROLLED_BACK", "REJECTED", "FAILED")
                           for d in h.api.get(f"/rollouts/{rid}/deployments")), 60, "every deployment undone")  # fmt: skip
    wait_until(lambda: set(device_versions(h).values()) == {"1.0.0"}, 60, "every device back on 1.0.0")
    assert sim.summary()["versions"] == {"1.0.0": DEVICES}


def test_mode_choice_and_bad_input() -> None:
    assert pick_mode("auto", 50, 1) == "agents"
    assert pick_mode("auto", 5000, 1) == "lean"
    assert pick_mode("auto", 50, 2) == "lean"
    assert pick_mode("agents", 5000, 1) == "agents"
    config = SimulationConfig(devices=1, fleet="f", broker="mqtt://127.0.0.1:1", bundle=Path("x"), trust=[])
    with pytest.raises(ConfigError, match="processes"):
        LeanSimulation(config, processes=0)
    assert merge_summaries([
        {"devices": 2, "versions": {"1": 2}, "states": {"committed": 2}, "crashes": 0, "connected": 2},
        {"devices": 1, "versions": {"1": 1}, "states": {"probation": 1}, "crashes": 1, "connected": 0},
    ]) == {"devices": 3, "versions": {"1": 3}, "states": {"committed": 2, "probation": 1}, "crashes": 1,
           "connected": 2}  # fmt: skip


def test_strand_runs_in_order_one_at_a_time_and_survives_a_failure() -> None:
    from concurrent.futures import ThreadPoolExecutor

    seen: list[int] = []
    with ThreadPoolExecutor(4) as pool:
        strand = Strand(pool)
        for i in range(200):
            strand.submit(lambda i=i: seen.append(i))  # type: ignore[misc]
            if i == 100:
                strand.submit(lambda: 1 / 0)  # type: ignore[func-returns-value]
        wait_until(lambda: len(seen) == 200, 10, "every step")
    assert seen == list(range(200))


def test_fleetctl_simulate_lean_command(
    tmp_path: Path, broker: LocalBroker, tiny_models: dict[str, Path], release_key: PrivateKey,
    key_files: tuple[Path, Path],
) -> None:  # fmt: skip
    import json

    from click.testing import CliRunner

    from fleet.cli import cli
    from tests.support.agent_harness import Watcher

    initial = tmp_path / "digits-1.0.0.efb"
    initial.write_bytes(package_tiny(tiny_models, release_key, "1.0.0", 1))
    watcher = Watcher(broker.url, fleet="sim")
    base = ["simulate", "--devices", "6", "--fleet", "sim", "--broker", broker.url, "--bundle", str(initial),
            "--trust", str(key_files[1]), "--skus", "a,b", "--duration", "3", "--telemetry-interval", "0.5"]  # fmt: skip
    args = [*base, "--mode", "lean", "--processes", "2", "--workdir", str(tmp_path / "homes"), "--json"]
    result = CliRunner().invoke(cli, args)
    watcher.drain(1.0)
    watcher.close()
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[-1])
    assert (summary["devices"], summary["versions"], summary["crashes"]) == (6, {"1.0.0": 6}, 0)
    assert {d for d, _ in watcher.telemetry} == {f"sim-{i:05d}" for i in range(6)}  # every device reports
    assert watcher.status == {f"sim-{i:05d}": "offline" for i in range(6)}  # and said goodbye
    bad = CliRunner().invoke(cli, [*base, "--mode", "agents", "--processes", "2"])
    assert bad.exit_code == 1 and "--processes needs --mode lean" in bad.output
