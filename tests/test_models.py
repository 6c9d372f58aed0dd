"""The reference models are real: converted models keep the trained weights in both runtimes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device_agent.runtime import load_runtime


@pytest.mark.parametrize("kind", ["tflite", "onnx"])
def test_tiny_digits_is_accurate_in_the_device_runtime(tiny_models: dict[str, Path], kind: str) -> None:
    runtime = load_runtime(kind, tiny_models[kind])
    assert [t.name for t in runtime.inputs] == ["image"]
    assert [t.name for t in runtime.outputs] == ["probs"]
    with np.load(tiny_models["eval"]) as data:
        x, y = data["x"], data["y"]
    probs = runtime.run({"image": x})["probs"]
    assert probs.shape == (len(x), 10)
    assert (probs.argmax(axis=1) == y).mean() > 0.9  # a conversion that lost the weights scores ~0.1


def test_tflite_and_onnx_agree(tiny_models: dict[str, Path]) -> None:
    with np.load(tiny_models["eval"]) as data:
        x = data["x"][:64]
    a = load_runtime("tflite", tiny_models["tflite"]).run({"image": x})["probs"]
    b = load_runtime("onnx", tiny_models["onnx"]).run({"image": x})["probs"]
    assert np.abs(a - b).max() < 1e-4
