"""Prove the agent runs with its own extras alone: `edgefleet[agent]` and `edgefleet[agent-legacy]`.

For each extra: a fresh virtual environment (build/venv-EXTRA) with only that extra installed,
no tensorflow and no onnx; a device home flashed with the tiny-digits bundle; then
`edge-agent predict --home … eval.npz --json` in that environment must classify the held-out
digits correctly. Called by `make test-agent-envs` (and .ci/run).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "agent-envs"
EXTRAS = {"agent": "ai_edge_litert", "agent-legacy": "tflite_runtime"}


def prepare_device() -> tuple[Path, Path]:
    from device_agent.bundle import PrivateKey
    from toolchain.flash import FlashOptions, flash
    from toolchain.packaging import PackageOptions, package

    shutil.rmtree(WORK / "dev", ignore_errors=True)
    models = WORK / "models"
    if not (models / "model.tflite").exists():
        subprocess.run(
            [sys.executable, "-m", "models", "build", "tiny-digits", "--out", str(models)], cwd=ROOT, check=True
        )
    key = PrivateKey.generate()
    _, pub = key.save(WORK / "dev" / "keys" / "release")
    opts = PackageOptions(name="digits", version="1.0.0", sequence=1, keys=[key], labels=models / "labels.txt")
    bundle = WORK / "dev" / "digits.efb"
    bundle.write_bytes(package(models / "model.tflite", opts))
    home = WORK / "dev" / "home"
    flash(bundle, home, FlashOptions(device_id="legacy-1", broker="mqtt://127.0.0.1:1883", trust=[pub]))
    return home, models / "eval.npz"


def check(extra: str, home: Path, eval_npz: Path) -> str:
    env_dir = WORK / f"venv-{extra}"
    if not (env_dir / "bin" / "python").exists():
        venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "--quiet", f"{ROOT}[{extra}]"], check=True)
    probe = "import importlib.util as u; print([m for m in ('tensorflow', 'onnx', 'keras') if u.find_spec(m)])"
    heavy = subprocess.run([py, "-c", probe], check=True, capture_output=True, text=True).stdout.strip()
    if heavy != "[]":
        return f"{extra}: heavy packages installed: {heavy}"
    versions = subprocess.run(
        [
            py,
            "-c",
            f"import numpy, {EXTRAS[extra]} as r; print(numpy.__version__, r.__name__, getattr(r, '__version__', '?'))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    out = subprocess.run(
        [str(env_dir / "bin" / "edge-agent"), "predict", "--home", str(home), str(eval_npz), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return f"{extra}: edge-agent predict failed: {out.stderr.strip()[-300:]}"
    with np.load(eval_npz) as data:
        labels = data["y"]
    accuracy = float((np.array(json.loads(out.stdout)["top1"]) == labels).mean())
    print(
        f"{extra}: numpy/runtime {versions}; edge-agent predict top-1 accuracy {accuracy:.3f} on {len(labels)} digits"
    )
    return "" if accuracy > 0.9 else f"{extra}: accuracy {accuracy:.3f} is too low"


def main() -> None:
    home, eval_npz = prepare_device()
    problems = [p for extra in EXTRAS if (p := check(extra, home, eval_npz))]
    for p in problems:
        print(f"FAILED {p}")
    print(f"{len(EXTRAS) - len(problems)} passed, {len(problems)} failed")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
