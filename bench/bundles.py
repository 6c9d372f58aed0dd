"""Bundle bytes against model bytes for every reference model and every third-party test model:
the full self-test (``--max-overhead`` lifted) beside the lean bundle ``edgetool package`` writes.

Reference models are built with ``python -m models build`` into a temporary directory, or reused
from ``$EDGEFLEET_BENCH_MODELS/NAME`` when that holds them (building mobilenet-96 takes minutes).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.bundle import PrivateKey, read_bundle
from models import RECIPES, build
from toolchain.packaging import PackageOptions, package
from toolchain.selftest import overhead_bound


def _reference(name: str, root: Path) -> Path:
    out = root / name
    if not (out / "model.tflite").exists():
        build(name, out)
    return out


def _row(label: str, model: Path, key: PrivateKey, **kw: Any) -> str:
    full = package(model, PackageOptions("bench", "1.0.0", 1, [key], max_overhead=1 << 40, **kw))
    lean = package(model, PackageOptions("bench", "1.0.0", 1, [key], **kw))
    size = model.stat().st_size
    selftest = read_bundle(lean).manifest.selftest
    compact = selftest.compact if selftest else None
    form = "full (/1)" if compact is None else f"compact: {compact.samples} {compact.inputs} samples"
    over = len(lean) - size
    return (
        f"| {label} | {size:,} | {len(full):,} | {len(lean):,} | {over:,} | {overhead_bound(size):,} | "
        f"{len(lean) / size:.3f}x | {form} |"
    )


def _third_party(key: PrivateKey, work: Path) -> list[str]:
    from tests.support.thirdparty import face_images, installed, text_images, vad_samples

    np.savez(work / "face.npz", x=face_images(8, seed=1))
    np.savez(work / "text.npz", x=text_images(8, seed=1))
    np.savez(work / "vad.npz", **vad_samples(8, seed=1))
    return [
        _row("BlazeFace .tflite", installed("face-detector"), key, selftest_inputs=work / "face.npz"),
        _row("PaddleOCR text detector .onnx", installed("text-detector"), key, selftest_inputs=work / "text.npz"),
        _row("Silero VAD .onnx", installed("vad"), key, selftest_inputs=work / "vad.npz"),
    ]


def run() -> str:
    key = PrivateKey.generate()
    lines = [
        "## Bundle size: lean bundles\n",
        "Bytes of the bundle `edgetool package` writes, against its model's bytes and the bound "
        'max(64 KiB, 10 % of the model) (docs/bundle-format.md#the-self-test); "full" is the same '
        "bundle with every self-test sample and output stored (8 samples: calibration for the reference "
        "models, realistic inputs from tests/support/thirdparty.py for the others).\n",
        "| model | model bytes | with the full self-test | bundle | overhead | bound | bundle/model | self-test |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-bundles-") as tmp:
        root = Path(os.environ.get("EDGEFLEET_BENCH_MODELS") or tmp)
        for name in RECIPES:
            paths = _reference(name, root)
            for kind in ("tflite", "onnx"):
                data = {"labels": paths / "labels.txt", "calibration": paths / "calib.npz"}
                lines.append(_row(f"{name} .{kind}", paths / f"model.{kind}", key, **data))
        lines += _third_party(key, Path(tmp))
    return "\n".join(lines) + "\n"
