"""The fleet simulator: real agents (update pipeline, telemetry, MQTT sessions) with injected faults."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent import protocol as P
from device_agent.bundle import PrivateKey
from device_agent.errors import ConfigError
from fleet.broker import LocalBroker
from fleet.sim.agents import Simulation
from fleet.sim.config import Fault, SimulationConfig
from tests.support.agent_harness import ArtifactServer, Watcher, package_tiny, send_deploy

S = P.DeploymentState


def test_fault_specs() -> None:
    assert Fault.parse("digits@1.2.0:rpi4=slow") == Fault("digits@1.2.0", "rpi4", "slow")
    assert Fault.parse("digits@1.2.0=crash") == Fault("digits@1.2.0", None, "crash")
    with pytest.raises(ConfigError, match="NAME@VERSION"):
        Fault.parse("digits=explode")


def four_sku_config(tmp_path: Path, broker_url: str, initial: Path, pub: Path) -> SimulationConfig:
    """8 devices over 4 skus: a clean one, and one per fault kind on digits 2.0.0."""
    faults = tuple(
        Fault.parse(f) for f in ("digits@2.0.0:sku-b=selftest", "digits@2.0.0:sku-c=crash", "digits@2.0.0:sku-d=slow")
    )
    return SimulationConfig(
        devices=8,
        fleet="test",
        broker=broker_url,
        bundle=initial,
        trust=[pub],
        skus=("sku-a", "sku-b", "sku-c", "sku-d"),
        faults=faults,
        workdir=tmp_path / "sim",
        telemetry_interval_s=1.0,
        replay_rate=25.0,
    )


def test_simulated_devices_run_the_real_update_path_with_injected_faults(
    tmp_path: Path,
    broker: LocalBroker,
    tiny_models: dict[str, Path],
    release_key: PrivateKey,
    key_files: tuple[Path, Path],
) -> None:
    initial = tmp_path / "digits-1.0.0.efb"
    initial.write_bytes(package_tiny(tiny_models, release_key, "1.0.0", 1))
    (tmp_path / "srv").mkdir()
    server = ArtifactServer(tmp_path / "srv")
    url, sha, size = server.publish("digits-2.0.0.efb", package_tiny(tiny_models, release_key, "2.0.0", 2))
    watcher = Watcher(broker.url)
    sim = Simulation(four_sku_config(tmp_path, broker.url, initial, key_files[1]))
    sim.start()
    try:
        watcher.wait(lambda: sum(v == "online" for v in watcher.status.values()) == 8, timeout=30)
        watcher.wait(lambda: len({d for d, _ in watcher.telemetry}) == 8, timeout=30)  # every device reports
        deployments = {
            d.id: (d.sku, send_deploy(broker.url, "test", d.id, url, sha, size)) for d in sim.devices.values()
        }
        expected = {
            "sku-a": (S.SUCCEEDED, ""),
            "sku-b": (S.ROLLED_BACK, "selftest"),
            "sku-c": (S.FAILED, "crash-loop"),
            "sku-d": (S.ROLLED_BACK, "probation-latency"),
        }
        for device_id, (sku, dep) in deployments.items():
            ev = watcher.wait_event(dep, {S.SUCCEEDED, S.ROLLED_BACK, S.FAILED, S.REJECTED}, timeout=90)
            assert (ev.state, ev.reason) == expected[sku], (device_id, ev)
        summary = sim.summary()
        assert summary["versions"] == {"2.0.0": 2, "1.0.0": 6}
        assert summary["crashes"] >= 6  # each sku-c device crashed on every install attempt, then gave up
    finally:
        sim.stop()
        watcher.close()
        server.close()


def test_fleetctl_simulate_command(tmp_path: Path, broker: LocalBroker, tiny_models, release_key, key_files) -> None:
    import json

    from click.testing import CliRunner

    from fleet.cli import cli

    initial = tmp_path / "digits-1.0.0.efb"
    initial.write_bytes(package_tiny(tiny_models, release_key, "1.0.0", 1))
    watcher = Watcher(broker.url, fleet="sim")
    fleet = ["--devices", "3", "--fleet", "sim", "--skus", "a,b"]
    timing = ["--duration", "4", "--telemetry-interval", "0.5"]
    where = ["--broker", broker.url, "--bundle", str(initial), "--trust", str(key_files[1])]
    args = ["simulate", *fleet, *timing, *where, "--json"]
    result = CliRunner().invoke(cli, args)
    watcher.drain(1.0)
    watcher.close()
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[-1]) == {
        "devices": 3,
        "versions": {"1.0.0": 3},
        "states": {"committed": 3},
        "crashes": 0,
    }
    assert {d for d, _ in watcher.telemetry} == {"sim-00000", "sim-00001", "sim-00002"}
    bad = CliRunner().invoke(cli, [*args[:-1], "--fault", "digits=boom"])
    assert bad.exit_code == 1 and "NAME@VERSION" in bad.output
