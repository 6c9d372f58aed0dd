"""Never write an invalid model: the runtime check before the output is written, and the opset
upgrade a quantization mode needs (tiny ONNX graphs built here with onnx.helper, real ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from device_agent.runtime import load_runtime
from tests.support.quant_helpers import edgetool
from toolchain.errors import QuantizeError
from toolchain.validate import check_model


def _conv_model(path: Path, opset: int) -> Path:
    """A 3x3 conv (4 output channels) + relu over [batch, 1, 8, 8], at ``opset``."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 6, 6])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def _per_channel_dq_at_opset_12(path: Path) -> Path:
    """What a per-channel quantizer writes into an opset-12 graph: DequantizeLinear with ``axis``."""
    q = numpy_helper.from_array(np.ones((4, 2), np.int8), "q")
    scale = numpy_helper.from_array(np.full(4, 0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.zeros(4, np.int8), "z")
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], axis=0)
    add = helper.make_node("Add", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node, add],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])],
        [q, scale, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def test_a_model_its_runtime_refuses_is_never_accepted(tmp_path: Path) -> None:
    bad = _per_channel_dq_at_opset_12(tmp_path / "bad.onnx")
    with pytest.raises(QuantizeError, match=r"does not load in its device runtime \(onnx\)"):
        check_model("onnx", bad, None)


def test_check_model_runs_the_sample_and_only_loads_when_shapes_say_too_little(tmp_path: Path) -> None:
    model = _conv_model(tmp_path / "m.onnx", 13)
    check_model("onnx", model, {"x": np.ones((1, 1, 8, 8), np.float32)})
    with pytest.raises(QuantizeError, match="loads but fails to run"):
        check_model("onnx", model, {"x": np.ones((1, 1, 2, 2), np.float32)})  # a 2x2 image is too small for 3x3
    check_model("onnx", model, None)  # synthetic [1, 1, 8, 8] runs


@pytest.mark.parametrize(
    "args",
    [
        ["--mode", "dynamic"],
        ["--mode", "dynamic", "--per-channel"],
        ["--mode", "int8"],
        ["--mode", "int8", "--per-channel"],
        ["--mode", "int8", "--per-channel", "--calibrate", "entropy"],
    ],
    ids=["dynamic", "dynamic-pc", "int8", "int8-pc", "int8-pc-entropy"],
)
def test_every_onnx_mode_on_an_opset11_model_writes_a_loadable_file(args: list[str], tmp_path: Path) -> None:
    model = _conv_model(tmp_path / "m.onnx", 11)
    x = np.random.default_rng(1).normal(size=(16, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    out = tmp_path / "q.onnx"
    edgetool("quantize", model, "--format", "onnx", *args, "--calibration", tmp_path / "calib.npz", "-o", out)
    opset = next(o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= (13 if "--per-channel" in args else 11)
    (y,) = load_runtime("onnx", out).run({"x": x[:1]}).values()
    (want,) = load_runtime("onnx", model).run({"x": x[:1]}).values()
    cos = float(np.dot(y.ravel(), want.ravel()) / (np.linalg.norm(y) * np.linalg.norm(want)))
    assert y.shape == (1, 4, 6, 6) and cos > 0.95


def test_report_of_a_non_classifier_carries_cosine_sqnr_and_the_warning(tmp_path: Path) -> None:
    """A conv feature map is no classifier: the report has cosine/SQNR, no top-1, and flags a bad calibration."""
    import json

    model = _conv_model(tmp_path / "m.onnx", 13)
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "eval.npz", x=rng.normal(size=(8, 1, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "blank.npz", x=np.full((4, 1, 8, 8), 1e-3, np.float32))
    args = ["--format", "onnx", "--mode", "int8", "--eval", tmp_path / "eval.npz", "--report", tmp_path / "r"]
    result = edgetool("quantize", model, *args, "--calibration", tmp_path / "blank.npz", "-o", tmp_path / "q.onnx")
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    _, variant = doc["variants"]
    assert variant["drop_pp"] is None and variant["agreement"] is None and variant["cosine"] < 0.9
    assert variant["warning"].startswith("warning: int8 is far from the float model (y cosine")
    assert variant["warning"] in result.output
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| cosine | SQNR dB |" in md and "## Outputs" in md and f"**{variant['warning']}**" in md
    assert (tmp_path / "r" / "report.png").stat().st_size > 1000
