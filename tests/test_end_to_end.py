"""What `make demo` does, with real processes: a real broker (mosquitto when installed), `fleetctl serve`
and `fleetctl simulate` as subprocesses, releases added and rolled out with the `fleetctl` CLI.

A good release goes out in stages to every device; a release with an injected fault on one sku
(50 ms slower inference there) fails that sku's latency gate on the device, the rollout's failure
gate trips, and the fleet manager rolls back every device it changed: all end on the good release.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from device_agent.bundle import PrivateKey
from fleet.broker import LocalBroker, free_port
from fleet.client import ApiClient
from fleet.errors import ApiError
from tests.support.argv import argv
from tests.support.fleet_harness import wait_until
from tests.support.processes import BIN, background
from toolchain.packaging import PackageOptions, package

pytestmark = pytest.mark.slow
DEVICES, SKUS, TOKEN = 9, ("a", "b", "c"), "e2e-token-0123456789"


def fleetctl(server: str, *args: str) -> str:
    env = {"FLEETCTL_SERVER": server, "FLEETCTL_TOKEN": TOKEN, "PATH": str(BIN)}
    result = subprocess.run(
        [str(BIN / "fleetctl"), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def rollout(api: ApiClient, server: str, release: str) -> dict[str, Any]:
    # The devices share one process (and this machine's cores): their sub-ms p95 jitters by milliseconds.
    out = fleetctl(
        server, *argv("rollout", "start", release, stages="34,100", bake=4, health_settle=1, min_p95_delta=5, json=True)
    )
    rid = json.loads(out)["id"]
    ended = ("SUCCEEDED", "ABORTED", "ROLLED_BACK")
    return wait_until(  # type: ignore[no-any-return]
        lambda: (s := api.get(f"/rollouts/{rid}"))["state"] in ended and s, 120, f"rollout of {release} to end"
    )


def versions(api: ApiClient) -> dict[str, str]:
    return {d["id"]: d["model_version"] for d in api.get("/devices")}


def log_tails(*logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())


def _package_releases(tmp_path: Path, tiny_models: dict[str, Path], release_key: PrivateKey) -> None:
    """As in the demo: 1.0.0 the float model, 1.1.0 and 1.2.0 the int8 one (1.2.0 made slow on sku c);
    simulated devices replay the self-test inputs, so 128 calibration samples keep their drift (PSI) realistic."""
    for version, sequence, model in (("1.0.0", 1, "tflite"), ("1.1.0", 2, "tflite_int8"), ("1.2.0", 3, "tflite_int8")):
        opts = PackageOptions(
            name="digits",
            version=version,
            sequence=sequence,
            keys=[release_key],
            labels=tiny_models["labels"],
            calibration=tiny_models["calibration"],
            selftest_samples=128,
        )
        (tmp_path / f"digits-{version}.efb").write_bytes(package(tiny_models[model], opts))


def _serve_command(tmp_path: Path, broker_url: str, port: int, pub: str) -> list[str]:
    return argv(
        "fleetctl",
        "serve",
        db=f"sqlite:///{tmp_path / 'fleet.db'}",
        broker=broker_url,
        artifacts=tmp_path / "artifacts",
        listen=f"127.0.0.1:{port}",
        trust=pub,
        fleet="e2e",
        token=f"ci={TOKEN}",
    )


def _simulate_command(tmp_path: Path, broker_url: str, pub: str) -> list[str]:
    return argv(
        "fleetctl",
        "simulate",
        devices=DEVICES,
        fleet="e2e",
        broker=broker_url,
        bundle=tmp_path / "digits-1.0.0.efb",
        trust=pub,
        skus=",".join(SKUS),
        fault="digits@1.2.0:c=slow",
        replay_rate=10,
        telemetry_interval=1,
        workdir=tmp_path / "devices",
    )


def test_staged_rollout_then_a_bad_release_is_rolled_back_automatically(
    tmp_path: Path,
    broker: LocalBroker,
    tiny_models: dict[str, Path],
    release_key: PrivateKey,
    key_files: tuple[Path, Path],
) -> None:
    _package_releases(tmp_path, tiny_models, release_key)
    port, pub = free_port(), str(key_files[1])
    server = f"http://127.0.0.1:{port}"
    serve_log, sim_log = tmp_path / "serve.log", tmp_path / "simulate.log"
    serve = _serve_command(tmp_path, broker.url, port, pub)
    simulate = _simulate_command(tmp_path, broker.url, pub)
    api = ApiClient(server, TOKEN)
    with background(serve, serve_log) as serve_proc, background(simulate, sim_log, signal.SIGINT) as sim_proc:
        try:
            wait_until(lambda: _answers(api), 60, "fleetctl serve to answer")
            on_1_0_0 = f"{DEVICES} simulated devices registered on 1.0.0"
            wait_until(lambda: Counter(v for v in versions(api).values()) == {"1.0.0": DEVICES}, 120, on_1_0_0)
            for version in ("1.1.0", "1.2.0"):
                assert "added digits@" in fleetctl(server, "releases", "add", str(tmp_path / f"digits-{version}.efb"))

            good = rollout(api, server, "digits@1.1.0")
            assert good["state"] == "SUCCEEDED", good["reason"]
            assert good["targets"] == [4, 9]  # 34% of 9, and the first stage holds every sku
            assert Counter(versions(api).values()) == {"1.1.0": DEVICES}

            bad = rollout(api, server, "digits@1.2.0")
            assert bad["state"] == "ABORTED"
            assert bad["reason"].startswith("failure threshold 10% tripped")
            deployments = f"/rollouts/{bad['id']}/deployments"
            all_back = "every deployment of 1.2.0 rolled back"
            wait_until(lambda: all(d["state"] == "ROLLED_BACK" for d in api.get(deployments)), 60, all_back)
            deps = api.get(f"/rollouts/{bad['id']}/deployments")
            skus = {d["id"]: d["sku"] for d in api.get("/devices")}
            assert {skus[d["device_id"]] for d in deps} == set(SKUS)  # the first stage sampled every sku
            for dep in deps:  # sku c refused on its own latency gate; the others were rolled back by the fleet
                expected = "probation-latency" if skus[dep["device_id"]] == "c" else "requested"
                assert dep["reason"] == expected, dep
            wait_until(lambda: Counter(versions(api).values()) == {"1.1.0": DEVICES}, 60, "every device on 1.1.0")
            assert set(versions(api)) == {f"sim-{i:05d}" for i in range(DEVICES)}
            assert serve_proc.poll() is None and sim_proc.poll() is None
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_tails(serve_log, sim_log)}") from None


def _answers(api: ApiClient) -> bool:
    try:
        api.get("/health")
    except ApiError:
        return False
    return True
