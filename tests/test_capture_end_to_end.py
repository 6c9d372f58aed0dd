"""The capture loop end to end, with real processes on a real Mosquitto: `fleetctl serve`, `fleetctl simulate`
(real agents; sku b's sensor drifts by 3 standard deviations, whatever release it runs), the `fleetctl` and
`edgetool` command lines.

Capture is enabled for sku b only: samples arrive from sku b's devices and from no other. Then the broker
and the fleet manager both go away while the devices keep capturing; every sample a device held then
(captured, not yet confirmed) reaches the fleet manager once both are back. Finally the captured data is
exported, the model recalibrated on it (`edgetool quantize --calibration field.npz`), packaged (its
provenance names the export), signed, and rolled out to sku b: its drift (psi_max) falls.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from device_agent.bundle import PrivateKey, read_bundle
from device_agent.capture.store import sample_names
from fleet.broker import LocalBroker, free_port, start_mosquitto
from fleet.client import ApiClient
from fleet.errors import ApiError
from tests.support.argv import argv
from tests.support.fleet_harness import wait_until
from tests.support.processes import BIN, background
from toolchain import workflows
from toolchain.packaging import PackageOptions, package

pytestmark = pytest.mark.slow
DEVICES, TOKEN, FLEET = 4, "capture-e2e-token-0123", "cap"
DRIFT = "drift:3"


def run(tool: str, *args: str, server: str = "") -> str:
    env = {"FLEETCTL_SERVER": server, "FLEETCTL_TOKEN": TOKEN, "PATH": str(BIN)}
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")  # (a worktree run: its code, not the installed one)
    result = subprocess.run([str(BIN / tool), *args], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _answers(api: ApiClient) -> bool:
    try:
        api.get("/health")
    except ApiError:
        return False
    return True


def _device_samples(workdir: Path, device: str) -> set[str]:
    """The ids of the samples a simulated device holds (captured, not yet confirmed) right now."""
    return {name.removesuffix(".sample") for name in sample_names(workdir / device / "capture" / "samples")}


def _telemetry(api: ApiClient, device: str) -> dict[str, float]:
    return api.get(f"/devices/{device}")["telemetry"]  # type: ignore[no-any-return]


def _drift_fell(api: ApiClient, devices: list[str], before: dict[str, float]) -> dict[str, float] | None:
    now = _sku_b_health(api, devices)
    return now if now["psi_max"] < before["psi_max"] / 2 else None


def _sku_b_health(api: ApiClient, devices: list[str]) -> dict[str, float]:
    tel = [api.get(f"/devices/{d}")["telemetry"] for d in devices]
    return {k: round(sum(t[k] for t in tel) / len(tel), 3) for k in ("conf_mean", "psi_max")}


@contextmanager
def _fleet_manager(tmp: Path, broker_url: str, port: int, pub: Path) -> Iterator[None]:
    serve = argv(
        "fleetctl",
        "serve",
        db=f"sqlite:///{tmp / 'fleet.db'}",
        broker=broker_url,
        artifacts=tmp / "artifacts",
        listen=f"127.0.0.1:{port}",
        trust=pub,
        fleet=FLEET,
        token=f"ci={TOKEN}",
    )
    with background(serve, tmp / "serve.log"):
        wait_until(lambda: _answers(ApiClient(f"http://127.0.0.1:{port}", TOKEN)), 60, "fleetctl serve to answer")
        yield


def _release(tmp: Path, tiny: dict[str, Path], key: PrivateKey) -> Path:
    """digits 1.0.0: the ONNX model quantized to int8 on the recipe's (clean) calibration data."""
    model = tmp / "v1.onnx"
    req = workflows.QuantizeRequest(tiny["onnx"], "onnx", "int8", model, calibration=tiny["calibration"])
    workflows.quantize(req, measure=False)
    opts = PackageOptions(
        "digits", "1.0.0", 1, [key], labels=tiny["labels"], calibration=tiny["calibration"], selftest_samples=128
    )
    path = tmp / "digits-1.0.0.efb"
    path.write_bytes(package(model, opts))
    return path


def _simulate(broker_url: str, bundle: Path, pub: Path, workdir: Path) -> list[str]:
    faults = ["--fault", f"digits@1.0.0:b={DRIFT}", "--fault", f"digits@1.1.0:b={DRIFT}"]  # the sensor, any release
    opts = {"skus": "a,b", "mode": "agents", "replay_rate": 20, "telemetry_interval": 1, "workdir": workdir}
    sim = argv(
        "fleetctl", "simulate", devices=DEVICES, fleet=FLEET, broker=broker_url, bundle=bundle, trust=pub, **opts
    )
    return [*sim, *faults]


@dataclass
class Loop:
    tmp: Path
    api: ApiClient
    server: str
    workdir: Path
    on_b: list[str]

    def fleetctl(self, *args: str) -> str:
        return run("fleetctl", *args, server=self.server)

    def captured(self) -> list[dict[str, Any]]:
        return json.loads(self.fleetctl("capture", "ls", "--json", "--limit", "100000"))  # type: ignore[no-any-return]

    def held(self) -> set[str]:
        return set().union(*(_device_samples(self.workdir, d) for d in self.on_b))


def _capture_one_sku(loop: Loop, skus: dict[str, str]) -> None:
    """Enable capture for sku b: samples come from sku b's devices only, low-confidence ones among them."""
    loop.fleetctl(
        *argv("capture", "enable", selector="sku=b", rule="low-confidence:0.7", max_mb=2, max_per_hour=100_000),
        "--rule",
        "drift",
        "--rule",
        "random:0.01",
    )
    wait_until(lambda: len(loop.captured()) >= 40, 120, "40 samples uploaded")
    rows = loop.captured()
    assert {r["sku"] for r in rows} == {"b"} and {r["device"] for r in rows} <= set(loop.on_b)
    assert "low-confidence" in {r["reason"] for r in rows}
    for device, sku in skus.items():  # sku a: no policy, nothing captured, nothing held
        has_policy = (loop.workdir / device / "capture" / "policy.json").exists()
        assert has_policy == (sku == "b") and (sku == "b" or not _device_samples(loop.workdir, device))


def _recalibrate_and_roll_out(loop: Loop, tiny: dict[str, Path], key_files: tuple[Path, Path]) -> None:
    """export -> quantize -> package (provenance: the export) -> releases add -> rollout to sku b."""
    field = loop.tmp / "field.npz"
    loop.fleetctl("capture", "export", "-o", str(field), "--model", "digits@1.0.0")
    model = loop.tmp / "v2.onnx"
    quantize = argv("quantize", tiny["onnx"], format="onnx", mode="int8", calibration=field, output=model, json=True)
    report = json.loads(run("edgetool", *quantize))
    sidecar = json.loads(field.with_name("field.npz.json").read_text())
    assert report["field_data"]["npz_sha256"] == sidecar["npz_sha256"]  # the report names the export
    release = loop.tmp / "digits-1.1.0.efb"
    run(
        "edgetool",
        *argv(
            "package",
            model,
            name="digits",
            version="1.1.0",
            sequence=2,
            key=key_files[0],
            labels=tiny["labels"],
            calibration=field,
            selftest_inputs=tiny["calibration"],  # the simulator replays self-test inputs: 1.0.0's scene
            selftest_samples=128,
            output=release,
        ),
    )
    prov: dict[str, Any] = read_bundle(release.read_bytes()).manifest.provenance
    assert prov["field_data"]["npz_sha256"] == sidecar["npz_sha256"]
    assert prov["field_data"]["query"] == {"model": "digits@1.0.0"}
    loop.fleetctl("releases", "add", str(release))
    out = loop.fleetctl(
        *argv("rollout", "start", "digits@1.1.0", selector="sku=b", stages="100", json=True), "--no-health"
    )
    rid = json.loads(out)["id"]
    ended = ("SUCCEEDED", "ABORTED")
    done = wait_until(lambda: (s := loop.api.get(f"/rollouts/{rid}"))["state"] in ended and s, 180, "the rollout")
    assert done["state"] == "SUCCEEDED", done.get("reason")
    versions = {d["id"]: d["model_version"] for d in loop.api.get("/devices")}
    assert {versions[d] for d in loop.on_b} == {"1.1.0"}
    assert {v for d, v in versions.items() if d not in loop.on_b} == {"1.0.0"}


def test_capture_one_sku_through_outages_then_recalibrate_and_roll_out(
    tmp_path: Path, tiny_models: dict[str, Path], release_key: PrivateKey, key_files: tuple[Path, Path]
) -> None:
    bundle, pub, workdir = _release(tmp_path, tiny_models, release_key), key_files[1], tmp_path / "devices"
    port, broker_port = free_port(), free_port()
    server, broker_url = f"http://127.0.0.1:{port}", f"mqtt://127.0.0.1:{broker_port}"
    api = ApiClient(server, TOKEN)
    simulate = _simulate(broker_url, bundle, pub, workdir)
    with ExitStack() as stack:
        broker: LocalBroker = stack.enter_context(start_mosquitto(port=broker_port, workdir=tmp_path / "mq1"))
        manager = stack.enter_context(ExitStack())
        manager.enter_context(_fleet_manager(tmp_path, broker_url, port, pub))
        stack.enter_context(background(simulate, tmp_path / "simulate.log", signal.SIGINT))
        wait_until(lambda: len(api.get("/devices")) == DEVICES, 120, "every simulated device registered")
        skus = {d["id"]: d["sku"] for d in api.get("/devices")}
        loop = Loop(tmp_path, api, server, workdir, sorted(d for d, s in skus.items() if s == "b"))
        wait_until(lambda: all("psi_max" in api.get(f"/devices/{d}")["telemetry"] for d in loop.on_b), 60, "drift")
        before = _sku_b_health(api, loop.on_b)
        _capture_one_sku(loop, skus)

        manager.close()  # the fleet manager (HTTP) goes away...
        broker.stop()  # ...and the broker too, while the devices keep capturing
        held = wait_until(lambda: len(s := loop.held()) >= 20 and s, 120, "samples held on the devices meanwhile")
        broker = stack.enter_context(start_mosquitto(port=broker_port, workdir=tmp_path / "mq2"))
        manager.enter_context(_fleet_manager(tmp_path, broker_url, port, pub))
        wait_until(lambda: held <= {r["id"] for r in loop.captured()}, 180, "every sample held meanwhile to arrive")
        rows = loop.captured()
        assert len({(r["device"], r["id"]) for r in rows}) == len(rows)  # none twice

        _recalibrate_and_roll_out(loop, tiny_models, key_files)
        seq2 = "telemetry from the new release"
        wait_until(
            lambda: all(api.get(f"/devices/{d}")["telemetry"].get("model_sequence") == 2 for d in loop.on_b), 60, seq2
        )
        after = wait_until(
            lambda: _drift_fell(api, loop.on_b, before), 60, f"sku b's psi_max to fall below half {before}"
        )
        print(f"sku b before: {before}; after recalibration on captured data: {after}")
