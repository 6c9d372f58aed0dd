"""The fleet's health gate in the field: real processes (a real Mosquitto, `fleetctl serve`, `fleetctl simulate`
with 60 devices running the real agent and LiteRT), field noise on every device (`--noise 0.02`), and a CPU hog
(a busy loop per core) on the machine the whole time.

A good release (the same model, repackaged) rolls out in stages with a 10 s bake and completes; a release that is
2.5x slower on sku b only (far below the device's own probation budget, so every device commits it) is stopped by
the fleet's health gate, whose abort reason names sku b and latency, and every device it changed rolls back.
`EDGEFLEET_FIELD_DEVICES` changes the fleet size (docs/development.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device_agent.bundle import PrivateKey
from fleet.broker import LocalBroker, free_port
from fleet.client import ApiClient
from tests.support.argv import argv
from tests.support.fleet_harness import wait_until
from tests.support.processes import BIN, background, stop_group
from tests.test_end_to_end import TOKEN, _answers, _serve_command, log_tails, versions
from toolchain.packaging import PackageOptions, package

# In `make test` (and `make test-field` alone): about 80-130 s on a loaded 2-core machine, 600 s is a hang guard.
pytestmark = [pytest.mark.slow, pytest.mark.field, pytest.mark.timeout(600)]
DEVICES = int(os.environ.get("EDGEFLEET_FIELD_DEVICES", "60"))
SKUS = ("a", "b", "c")
# A CPU hog makes some devices slower than their neighbours whatever they run: a fleet with odd devices, where the
# gate's windows are clustered in devices (docs/operations.md, "Clustering"). Without --health-clustered one such
# device alone, in a first stage of one updated device per sku, failed sku a's p50 latency at p 0.02-0.04 in a CI run
# (x1.79 on 1 of 14 devices), three evaluations a second apart on nearly the same windows: a good release aborted.
GATE = {"bake": 10, "health_settle": 2, "health_interval": 1, "min_p95_delta": 0, "health_clustered": True}


def fleetctl(server: str, *args: str) -> str:
    env = {**os.environ, "FLEETCTL_SERVER": server, "FLEETCTL_TOKEN": TOKEN}
    result = subprocess.run(
        [str(BIN / "fleetctl"), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def cpu_hog() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A busy loop per core, for the whole test."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        yield hogs
    finally:
        for hog in hogs:
            stop_group(hog, signal.SIGKILL)


def _package(tmp_path: Path, tiny_models: dict[str, Path], key: PrivateKey) -> None:
    """Three releases of the same float model: 1.0.0 on the devices, 1.1.0 good, 1.2.0 made slower on sku b."""
    for version, sequence in (("1.0.0", 1), ("1.1.0", 2), ("1.2.0", 3)):
        opts = PackageOptions(
            name="digits",
            version=version,
            sequence=sequence,
            keys=[key],
            labels=tiny_models["labels"],
            calibration=tiny_models["calibration"],
            selftest_samples=128,
        )
        (tmp_path / f"digits-{version}.efb").write_bytes(package(tiny_models["tflite"], opts))


def _simulate(tmp_path: Path, broker_url: str, pub: str) -> list[str]:
    return argv(
        "fleetctl",
        "simulate",
        devices=DEVICES,
        fleet="e2e",
        broker=broker_url,
        bundle=tmp_path / "digits-1.0.0.efb",
        trust=pub,
        skus=",".join(SKUS),
        # Well above the gate's effect size (x1.5), as a test of the whole path must be: under the hog, a device's
        # latency is partly scheduling that no slowdown stretches, so x1.6 showed as x1.40-1.58 in sku b's p50 (x1.5-2.5
        # at slower:2, x1.72-2.77 at 2.5, with a third busy loop). At x1.40, on 10 updated devices of 20, p50 was
        # p 0.045: a pass since each comparison is decided at alpha / comparisons tested (a CI run let it through).
        # The gate's power at its effect size is measured on generated telemetry (`python -m bench --only gates`).
        fault="digits@1.2.0:b=slower:2.5",
        noise=0.02,
        replay_rate=10,
        telemetry_interval=1,
        probation_seconds=6,
        workdir=tmp_path / "devices",
    )


def _rollout(api: ApiClient, server: str, release: str, seen: list[str]) -> dict[str, Any]:
    """Start a rollout and wait for its end; ``seen`` gets the gate's evidence rows as they change (for a failure's
    message: what the gate saw, not only what it decided)."""
    out = fleetctl(server, *argv("rollout", "start", release, stages="10,50,100", json=True, **GATE))
    rid = json.loads(out)["id"]
    ended = ("SUCCEEDED", "ABORTED", "ROLLED_BACK")

    def done() -> dict[str, Any] | None:
        status: dict[str, Any] = api.get(f"/rollouts/{rid}")
        for e in status.get("health") or []:
            if (e["outcome"] != "inconclusive" and e["sku"] == "b" and "latency" in e["metric"]) or e["streak"]:
                row = {k: e[k] for k in ("sku", "metric", "outcome", "devices", "updated", "baseline", "p_value")}
                seen.append(f"{release} stage {status['stage'] + 1}: {row} streak {e['streak']}")
        return status if status["state"] in ended else None

    return wait_until(done, 300, f"rollout of {release} to end")  # type: ignore[no-any-return]


def test_noisy_fleet_under_cpu_load_good_release_completes_slower_one_aborts_on_sku_b_latency(
    tmp_path: Path,
    broker: LocalBroker,
    tiny_models: dict[str, Path],
    release_key: PrivateKey,
    key_files: tuple[Path, Path],
    cpu_hog: list[subprocess.Popen[bytes]],
) -> None:
    _package(tmp_path, tiny_models, release_key)
    port, pub = free_port(), str(key_files[1])
    server, api = f"http://127.0.0.1:{port}", ApiClient(f"http://127.0.0.1:{port}", TOKEN)
    logs = tmp_path / "serve.log", tmp_path / "simulate.log"
    serve, seen = _serve_command(tmp_path, broker.url, port, pub), list[str]()
    with background(serve, logs[0]), background(_simulate(tmp_path, broker.url, pub), logs[1], signal.SIGINT):
        try:
            wait_until(lambda: _answers(api), 60, "fleetctl serve to answer")
            registered = f"{DEVICES} simulated devices on 1.0.0"
            wait_until(lambda: Counter(versions(api).values()) == {"1.0.0": DEVICES}, 180, registered)
            for version in ("1.1.0", "1.2.0"):
                fleetctl(server, "releases", "add", str(tmp_path / f"digits-{version}.efb"))
            good = _rollout(api, server, "digits@1.1.0", seen)
            assert good["state"] == "SUCCEEDED", good["reason"]
            # The success threshold (90 %) lets a few devices fail their own probation, not a fleet-gate matter:
            # under this load a device's 40 ms latency budget is sometimes exceeded (probation-latency), and a
            # noise error burst (about 5 errors in 10 inferences) early in a 20-inference probation trips its
            # 25 % error limit (probation-errors).
            outcomes = Counter((d["state"], d["reason"]) for d in api.get(f"/rollouts/{good['id']}/deployments"))
            device_gates = {("ROLLED_BACK", "probation-latency"), ("ROLLED_BACK", "probation-errors")}
            assert set(outcomes) <= {("SUCCEEDED", ""), *device_gates}, outcomes
            assert Counter(versions(api).values())["1.1.0"] >= 0.9 * DEVICES, outcomes
            before = versions(api)
            bad = _rollout(api, server, "digits@1.2.0", seen)
            assert bad["state"] == "ABORTED"
            assert bad["reason"].startswith("model health: sku b: p"), bad["reason"]
            assert "latency" in bad["reason"] and "sku a" not in bad["reason"] and "sku c" not in bad["reason"]
            wait_until(lambda: versions(api) == before, 120, "every device back on the version it had")
        except AssertionError as exc:
            evidence = "\n".join(dict.fromkeys(seen[-300:]))  # the last distinct evidence rows
            raise AssertionError(f"{exc}\n--- gate evidence\n{evidence}\n{log_tails(*logs)}") from None
