"""Power-cut benchmark: 200 SIGKILLs of a real agent across every deployment phase."""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.agent import CACHE, models
from device_agent.bundle import PrivateKey
from fleet.broker import start_local_broker
from tests.support.powercut import KillResult, Rig, run_power_cuts

KILL_POINTS = 200


def run() -> str:
    models()
    tiny_dir = CACHE / "tiny"
    tiny = {
        "tflite": tiny_dir / "model.tflite",
        "calibration": tiny_dir / "calib.npz",
        "eval": tiny_dir / "eval.npz",
        "labels": tiny_dir / "labels.txt",
    }
    key = PrivateKey.generate()

    def progress(r: KillResult) -> None:
        if r.index % 20 == 0 or r.problem:
            print(f"  kill {r.index}: {r.target} → {r.final} {r.problem}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        _, pub = key.save(tmp / "keys" / "release")
        with start_local_broker(workdir=tmp / "broker") as broker:
            rig = Rig(tmp / "work", broker.url, tiny, key, pub)
            results = run_power_cuts(KILL_POINTS, 2026, rig, progress)
    failures = [r for r in results if r.problem]
    trust_cuts = [r for r in results if r.target == "TRUST"]
    by_phase = Counter(r.killed_after for r in results)
    finals = Counter(r.final for r in results)
    return "\n".join(
        [
            "## Power-cut safety\n",
            f"`tests/support/powercut.py`: {len(results)} SIGKILLs of a real `edge-agent run` during deployments "
            f"(broker: {broker.kind}) and trust updates, each followed by the boot checks and a restart.\n",
            f"- failures: **{len(failures)}** of {len(results)}"
            + (f" — first: {failures[0].problem}" if failures else ""),
            "- last state reported before the kill: " + ", ".join(f"{k} {v}" for k, v in sorted(by_phase.items())),
            "- how the deployment ended after the restart: " + ", ".join(f"{k} {v}" for k, v in sorted(finals.items())),
            f"- trust updates (a root-key rotation by cmd/trust) killed: {len(trust_cuts)}; trust.json after the kill: "
            + ", ".join(f"{k} {v}" for k, v in sorted(Counter(r.killed_after for r in trust_cuts).items())),
            f"- mean time per kill point: {sum(r.seconds for r in results) / len(results):.1f} s",
        ]
    )
