"""``make demo DEMO_ARGS=--loop``: the field data loop instead of the staged-rollout story.

1. build the tiny-digits reference model, quantize it to int8 (ONNX, static QDQ) on its clean calibration
   data: digits 1.0.0 (its int8 input range is where a drifting sensor bites: digits-cnn stays confident
   on shifted inputs, so it would show the drift but not the confidence loss);
2. start the broker, the fleet manager and the simulated fleet; the sensors of sku ``b`` drift: the
   simulator shifts every input they deliver by 3 standard deviations (``--fault …:b=drift:3``, for any
   release: it is the scene that changed, not the model);
3. the operator sees sku b's confidence fall and its drift (psi_max) rise, and enables capture for sku b
   only: low-confidence and drift-outlier inputs (and 1 % at random) come home;
4. export them (``fleetctl capture export``), recalibrate the int8 model on them (``edgetool quantize
   --calibration field.npz``), package and sign 1.1.0 (its provenance names the export), roll it out to
   sku b with the health gate on;
5. print sku b's confidence and drift before and after (sku a, whose sensors are fine, for reference).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from demo import Demo
from demo_support import DemoError, rel, say

DRIFT_SKU = "b"
DRIFT = "drift:3"
LOOP_RELEASES = ("1.0.0", "1.1.0")


class LoopDemo(Demo):
    """The demo's machinery (processes, commands shown as typed) with the capture loop's story."""

    def fault_args(self) -> list[str]:
        return [a for v in LOOP_RELEASES for a in ("--fault", f"digits@{v}:{DRIFT_SKU}={DRIFT}")]

    def build(self) -> None:
        self.fresh_workdir()
        say("the engineer: a release signing key and the tiny-digits reference model")
        self.run("edgetool", "keygen", "--out", self.path("keys/release"))
        if self.opts.models is None:
            self.run("python", "-m", "models", "build", "tiny-digits", "--out", rel(self.models))
        m = rel(self.models)
        say("quantize it to int8 (ONNX) on its clean calibration data, package and sign digits 1.0.0")
        quantize = ["edgetool", "quantize", f"{m}/model.onnx", "--format", "onnx", "--mode", "int8"]
        self.run(*quantize, "--calibration", f"{m}/calib.npz", "-o", self.path("digits-int8.onnx"), brief=True)
        self._package("1.0.0", 1, self.path("digits-int8.onnx"), f"{m}/calib.npz")

    def _package(self, version: str, sequence: int, model: str, calibration: str) -> None:
        m = rel(self.models)
        self.run(
            "edgetool", "package", model, "--name", "digits", "--version", version, "--sequence", str(sequence),
            "--key", self.path("keys/release.key"), "--labels", f"{m}/labels.txt", "--calibration", calibration,
            # simulated devices replay a bundle's self-test inputs: the same scene for every release
            "--selftest-inputs", f"{m}/calib.npz", "--selftest-samples", "128",
            "-o", self.path(f"digits-{version}.efb"), brief=True,
        )  # fmt: skip

    def start_fleet(self) -> None:
        self.start_broker()
        self.start_manager()
        print(f"   sku {DRIFT_SKU!r}'s sensors drift: the simulator shifts their inputs by 3 standard deviations")
        self.start_devices()

    def health(self) -> dict[str, dict[str, float]]:
        """Mean conf_mean and psi_max per sku from the devices' latest telemetry."""
        per: dict[str, list[dict[str, float]]] = {}
        for d in self.api.get("/devices"):
            tel = self.api.get(f"/devices/{d['id']}")["telemetry"]
            if "conf_mean" in tel and "psi_max" in tel:
                per.setdefault(d["sku"], []).append(tel)
        return {
            sku: {k: round(sum(t[k] for t in ts) / len(ts), 3) for k in ("conf_mean", "psi_max")}
            for sku, ts in sorted(per.items())
        }

    def story(self) -> None:
        self.loop()

    def loop(self) -> None:
        self.wait("telemetry with drift statistics", 120, lambda: (len(h := self.health()) >= 2, str(h)), every=5.0)
        before = self.health()
        say(f"the operator: sku {DRIFT_SKU}'s confidence is down and its drift up; capture its inputs")
        for sku, h in before.items():
            print(f"   sku {sku}: conf_mean {h['conf_mean']:.3f}, psi_max {h['psi_max']:.3f}")
        self.run(
            "fleetctl", "capture", "enable", "--selector", f"sku={DRIFT_SKU}", "--rule", "low-confidence:0.7",
            "--rule", "drift", "--rule", "random:0.01", "--per-class-max", "100", "--max-mb", "5",
            "--max-per-hour", "600", "--until", "1d",
        )  # fmt: skip
        self.wait("300 captured samples to come home", 300, self._captured(300), every=3.0)
        device = next(d["id"] for d in self.api.get("/devices") if d["sku"] == DRIFT_SKU)
        print(f"   {device}'s policy (fleetctl devices show {device}): {self.api.get(f'/devices/{device}')['capture']}")
        say("export them, recalibrate the model on them, package and sign 1.1.0")
        field = self.path("field.npz")
        self.run("fleetctl", "capture", "export", "-o", field, "--model", "digits@1.0.0")
        m = rel(self.models)
        quantize = ["edgetool", "quantize", f"{m}/model.onnx", "--format", "onnx", "--mode", "int8"]
        self.run(*quantize, "--calibration", field, "-o", self.path("digits-field-int8.onnx"), brief=True)
        self._package("1.1.0", 2, self.path("digits-field-int8.onnx"), field)
        prov = self.run("edgetool", "inspect", self.path("digits-1.1.0.efb"), "--json", brief=True)
        field_data = json.loads(prov).get("manifest", {}).get("provenance", {}).get("field_data")
        print(f"   provenance field_data: {field_data}")
        self.run("fleetctl", "releases", "add", self.path("digits-1.1.0.efb"))
        say(f"roll 1.1.0 out to sku {DRIFT_SKU} (half, then all; the health gate compares it with 1.0.0 there)")
        result = self.rollout_to("digits@1.1.0", f"sku={DRIFT_SKU}")
        if result["state"] != "SUCCEEDED":
            raise DemoError(f"rollout of 1.1.0 ended {result['state']}: {result['reason']}")
        self.wait("telemetry from 1.1.0 on every sku-b device", 120, self._all_on("1.1.0"), every=3.0)
        time.sleep(2 * self.opts.telemetry_s)  # a couple of telemetry windows on the new model (display only)
        self.report(before, self.health())

    def rollout_to(self, release: str, selector: str) -> dict[str, Any]:
        out = self.run("fleetctl", "rollout", "start", release, "--selector", selector, "--stages", "50,100",
                       "--bake", f"{self.opts.bake_s:g}", "--health-settle", f"{self.opts.settle_s:g}",
                       "--min-p95-delta", "5", "--json", brief=True)  # fmt: skip
        rid = json.loads(out)["id"]
        ended = ("SUCCEEDED", "ABORTED", "ROLLED_BACK")
        self.wait(
            f"rollout {rid}", 600, lambda: ((s := self.api.get(f"/rollouts/{rid}"))["state"] in ended, s["state"])
        )
        return self.api.get(f"/rollouts/{rid}")  # type: ignore[no-any-return]

    def _captured(self, n: int) -> Any:
        def probe() -> tuple[bool, str]:
            st = self.api.get("/capture/status")["samples"]
            rows = self.api.get("/capture/samples", limit=100_000)
            reasons = Counter(r["reason"] for r in rows)
            skus = Counter(r["sku"] for r in rows)
            return st[
                "samples"
            ] >= n, f"{st['samples']} samples ({st['bytes'] >> 10} KiB) by reason {dict(reasons)}, by sku {dict(skus)}"

        return probe

    def _all_on(self, version: str) -> Any:
        def probe() -> tuple[bool, str]:
            on = [d for d in self.api.get("/devices") if d["sku"] == DRIFT_SKU]
            done = all(d["model_version"] == version for d in on) and all(
                self.api.get(f"/devices/{d['id']}")["telemetry"].get("model_sequence") == 2 for d in on
            )
            return done, f"{sum(d['model_version'] == version for d in on)}/{len(on)} on {version}"

        return probe

    def report(self, before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> None:
        say("the loop, closed: sku b before and after recalibrating on its own field data")
        for sku in sorted(before):
            b, a = before[sku], after.get(sku, {})
            print(
                f"   sku {sku}: conf_mean {b['conf_mean']:.3f} → {a.get('conf_mean', float('nan')):.3f}, "
                f"psi_max {b['psi_max']:.3f} → {a.get('psi_max', float('nan')):.3f}"
                + ("   (drifting sensors; recalibrated)" if sku == DRIFT_SKU else "   (nothing changed: window noise)"),
                flush=True,
            )
