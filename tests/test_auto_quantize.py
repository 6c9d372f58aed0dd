"""Auto mode on digits-outlier, a model where full int8 misses a tight bound: it must end with a
mixed model (some layers int8, the worst in float) whose accuracy drop is within the bound.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.quant_helpers import assert_one_line_error, edgetool, eval_set, run_model

BOUND_PP = 1.0


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_auto_keeps_the_worst_layers_in_float_until_within_the_bound(
    fmt: str, tmp_path: Path, digits_outlier: dict[str, Path]
) -> None:
    out = tmp_path / f"auto.{fmt}"
    auto = ["--format", fmt, "--mode", "auto", "--max-accuracy-drop", str(BOUND_PP)]
    data = ["--calibration", digits_outlier["calibration"], "--eval", digits_outlier["eval"]]
    result = edgetool(
        "quantize", digits_outlier["keras"], *auto, *data, "-o", out, "--report", tmp_path / "report", "--json"
    )
    doc = json.loads(result.stdout)
    variants = {v["name"]: v for v in doc["variants"]}
    print(doc["reason"])
    assert variants["int8"]["drop_pp"] > BOUND_PP  # full int8 misses the bound ...
    assert doc["chosen"].startswith("int8 + ")  # ... so layers were kept in float
    assert doc["settings"]["float_nodes"]
    assert "chose" in doc["reason"] and "missed" in doc["reason"]

    # Independently: the written model runs in the device runtime, is within the bound, and is mixed.
    x, y = eval_set(digits_outlier)
    drop = 100 * (np.mean(run_model(digits_outlier[fmt], x).argmax(1) == y) - np.mean(run_model(out, x).argmax(1) == y))
    print(
        f"auto {fmt}: {doc['chosen']}, drop {drop:.2f} pp, "
        f"{out.stat().st_size / digits_outlier[fmt].stat().st_size:.2f}x"
    )
    assert drop <= BOUND_PP
    assert out.stat().st_size < 0.6 * digits_outlier[fmt].stat().st_size  # most weights stayed int8
    assert _has_int8_weights(out, fmt)
    assert json.loads((tmp_path / "report" / "report.json").read_text())["chosen"] == doc["chosen"]


def _has_int8_weights(model: Path, fmt: str) -> bool:
    if fmt == "onnx":
        import onnx

        return any(t.data_type == onnx.TensorProto.INT8 for t in onnx.load(str(model)).graph.initializer)
    from ai_edge_litert import interpreter

    details = interpreter.Interpreter(model_path=str(model)).get_tensor_details()
    return any(np.dtype(d["dtype"]) == np.int8 for d in details)


def test_auto_needs_eval_and_bound(tmp_path: Path, digits_outlier: dict[str, Path]) -> None:
    auto = ["--format", "tflite", "--mode", "auto", "--calibration", digits_outlier["calibration"]]
    result = edgetool("quantize", digits_outlier["keras"], *auto, "-o", tmp_path / "a.tflite", ok=False)
    assert_one_line_error(result, "--mode auto needs --eval, --max-accuracy-drop")
