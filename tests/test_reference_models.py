"""Reference model recipes: deterministic builds, and the sensor-shaped model survives int8."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, build_reference_model
from tests.support.quant_helpers import edgetool, eval_set, run_model


def test_a_recipe_builds_the_same_bytes_twice(tmp_path: Path) -> None:
    digests = []
    for i in range(2):
        out = tmp_path / str(i)
        build = [sys.executable, "-m", "models", "build", "tiny-digits", "--out", str(out)]
        subprocess.run(build, check=True, cwd=ROOT, capture_output=True)
        names = ("model.tflite", "model.onnx", "calib.npz", "eval.npz", "labels.txt")
        digests.append({n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in names})
    assert digests[0] == digests[1]


@pytest.mark.parametrize(("fmt", "source"), [("tflite", "keras"), ("onnx", "onnx")])
def test_kws_cnn_int8_keeps_its_accuracy(fmt: str, source: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    kws = build_reference_model(request, "kws-cnn")
    out = tmp_path / f"int8.{fmt}"
    edgetool("quantize", kws[source], "--format", fmt, "--mode", "int8", "--calibration", kws["calibration"], "-o", out)
    x, y = eval_set(kws)
    float_acc = np.mean(run_model(kws[fmt], x).argmax(1) == y)
    int8_acc = np.mean(run_model(out, x).argmax(1) == y)
    print(f"kws-cnn {fmt}: float {100 * float_acc:.2f} %, int8 {100 * int8_acc:.2f} %")
    assert float_acc > 0.9
    assert 100 * (float_acc - int8_acc) <= 1.0
