"""Models an engineer brings as they are: a zoo .tflite (float16 weights, no signature), an ONNX model
converted to TFLite (onnx2tf), and a PyTorch ExportedProgram (.pt2) to ONNX and TFLite.

Each result is judged by what it computes: the quantized face detector against its float original on
held-out drawings (cosine per output), the converted models against onnxruntime / PyTorch on the
same inputs (max abs error within the tolerance ``toolchain.convert`` states).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from device_agent.runtime import load_runtime
from tests.support.quant_helpers import assert_one_line_error, edgetool
from tests.support.thirdparty import face_images, text_images
from toolchain import qio
from toolchain.convert import ONNX_TFLITE_TOLERANCE

pytestmark = pytest.mark.slow


def run_float(model: Path | bytes, feeds: dict[str, np.ndarray], kind: str = "tflite") -> dict[str, np.ndarray]:
    """Float outputs of ``model`` in its device runtime (quantized I/O handled), keyed by output name."""
    runtime = load_runtime(kind, model)
    raw = runtime.run(qio.feeds(runtime.inputs, feeds))
    return {spec.name: qio.from_output(spec, raw[spec.name]) for spec in runtime.outputs}


def test_zoo_tflite_is_normalised_then_quantized_to_full_int8(tmp_path: Path, third_party: dict[str, Path]) -> None:
    """BlazeFace ships float16 weights behind DEQUANTIZE ops and no signature: intake widens and signs it,
    then the AI Edge quantizer makes a full-int8 model, smaller, within cosine 0.95 on held-out faces."""
    from toolchain.tflite_intake import normalise

    model = third_party["face-detector"]
    intake = normalise(model.read_bytes())
    assert intake.float16_weights > 50 and intake.added_signature
    held_out = face_images(6, seed=7)
    for i in range(2):  # the normalised model computes what the original does
        one = {"input": held_out[i : i + 1]}
        for name, value in run_float(model.read_bytes(), one).items():
            np.testing.assert_allclose(run_float(intake.data, one)[name], value, atol=1e-4)
    np.savez(tmp_path / "calib.npz", x=face_images(32, seed=1))
    np.savez(tmp_path / "eval.npz", x=held_out)
    out = tmp_path / "face-int8.tflite"
    args = ["--format", "tflite", "--mode", "int8", "--calibration", tmp_path / "calib.npz"]
    doc = json.loads(edgetool("quantize", model, *args, "--eval", tmp_path / "eval.npz", "-o", out, "--json").stdout)
    assert "ai-edge-quantizer" in doc["tools"] and out.stat().st_size < model.stat().st_size
    assert {o["name"]: o["cosine"] >= 0.95 for o in doc["evaluation"]["outputs"]} == {
        "regressors": True,
        "classificators": True,
    }
    runtime = load_runtime("tflite", out)  # full integer: int8 in and out
    assert [s.dtype for s in (*runtime.inputs, *runtime.outputs)] == ["int8", "int8", "int8"]
    judged = ["--reference", model, "--data", tmp_path / "eval.npz", "--runs", "0", "--layers", "3", "--json"]
    ev = json.loads(edgetool("evaluate", out, *judged).stdout)["evaluation"]
    assert "own cosine loss" in ev["layer_note"] and len(ev["layers"]) == 3
    assert ev["layers"][0]["cosine_loss"] >= ev["layers"][-1]["cosine_loss"] > 0
    again = edgetool(
        "quantize", out, "--format", "tflite", "--mode", "dynamic", "-o", tmp_path / "again.tflite", ok=False
    )
    assert_one_line_error(again, "already quantized", "start from the float model", "[quantize]")


@pytest.mark.parametrize("mode", ["weight-only", "float16", "dynamic", "int16x8"])
def test_every_mode_on_a_zoo_tflite_loads_and_runs(mode: str, tmp_path: Path, third_party: dict[str, Path]) -> None:
    np.savez(tmp_path / "calib.npz", x=face_images(4, seed=1))
    out = tmp_path / "q.tflite"
    edgetool(
        "quantize", third_party["face-detector"], "--format", "tflite", "--mode", mode,
        "--calibration", tmp_path / "calib.npz", "-o", out,
    )  # fmt: skip
    got = run_float(out, {"input": face_images(1, seed=3)})
    assert got["regressors"].shape == (1, 896, 16) and np.isfinite(got["regressors"]).all()


def test_int8_with_float_io_on_a_zoo_tflite_is_refused(tmp_path: Path, third_party: dict[str, Path]) -> None:
    np.savez(tmp_path / "calib.npz", x=face_images(2, seed=1))
    args = ["--format", "tflite", "--mode", "int8", "--io", "float", "--calibration", tmp_path / "calib.npz"]
    result = edgetool("quantize", third_party["face-detector"], *args, "-o", tmp_path / "q.tflite", ok=False)
    assert_one_line_error(result, "int8 input and output only", "[quantize]")
    assert not (tmp_path / "q.tflite").exists()


def test_onnx_to_tflite_matches_onnxruntime(tmp_path: Path, third_party: dict[str, Path]) -> None:
    """PaddleOCR's detector (dynamic H/W) through onnx2tf: same layout and names as ONNX, and outputs
    within 1e-4 of onnxruntime's on printed pages; without a size for H and W, one line says what to give."""
    model = third_party["text-detector"]
    refused = edgetool("convert", model, "--to", "tflite", "-o", tmp_path / "no.tflite", ok=False)
    assert_one_line_error(refused, "dynamic dimensions", "--input-shape x=1,3,N,N", "[model]")
    out = tmp_path / "text.tflite"
    result = edgetool("convert", model, "--to", "tflite", "--input-shape", "x=1,3,96,160", "-o", out)
    assert "onnx2tf" in result.output and "max abs error vs onnxruntime" in result.output
    pages = text_images(3, seed=4)
    for i in range(3):
        want = run_float(model, {"x": pages[i : i + 1]}, "onnx")
        got = run_float(out, {"x": pages[i : i + 1]})
        assert list(got) == list(want) == ["sigmoid_0.tmp_0"]
        assert got["sigmoid_0.tmp_0"].shape == (1, 1, 96, 160)
        assert np.abs(got["sigmoid_0.tmp_0"] - want["sigmoid_0.tmp_0"]).max() <= ONNX_TFLITE_TOLERANCE


def _torch_models(tmp: Path) -> tuple[Path, Path, np.ndarray]:
    """A small conv net and an FFT magnitude (no TFLite kernel for ONNX's DFT) saved with torch.export.save."""
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3))), dim=-1)

    class Spectrum(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.rfft(x).abs()

    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    net, fft = tmp / "net.pt2", tmp / "fft.pt2"
    torch.export.save(torch.export.export(Net().eval(), (x,)), str(net))
    torch.export.save(torch.export.export(Spectrum(), (torch.randn(1, 64),)), str(fft))
    return net, fft, x.numpy()


def test_pytorch_program_to_onnx_and_tflite(tmp_path: Path) -> None:
    """A .pt2 converts to ONNX (within 1e-5 of PyTorch) and TFLite (1e-4), quantizes to full-int8 TFLite
    (torch.onnx, onnx2tf, the AI Edge quantizer) and ONNX int8, and is checked against a device profile;
    an op with no TFLite kernel (ONNX DFT from torch.fft) is named in one line."""
    import torch

    net, fft, x = _torch_models(tmp_path)
    want = torch.export.load(str(net)).module()(torch.from_numpy(x)).detach().numpy()
    for target, tolerance in (("onnx", 1e-5), ("tflite", 1e-4)):
        out = tmp_path / f"net.{target}"
        result = edgetool("convert", net, "--to", target, "-o", out)
        assert f"{target} from pt2" in result.output and "torch 2." in result.output
        runtime = load_runtime(target, out)
        (got,) = runtime.run({runtime.inputs[0].name: x}).values()
        assert np.abs(got - want).max() <= tolerance, target
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(16, 3, 16, 16)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.normal(size=(8, 3, 16, 16)).astype(np.float32))
    int8 = ["--mode", "int8", "--calibration", tmp_path / "calib.npz", "--json"]
    lite = json.loads(edgetool("quantize", net, "--format", "tflite", *int8, "-o", tmp_path / "q.tflite").stdout)
    assert lite["tools"]["torch"].startswith("2.") and "onnx2tf" in lite["tools"]
    as_onnx = ["--format", "onnx", *int8, "--eval", tmp_path / "eval.npz", "-o", tmp_path / "q.onnx"]
    docs = [json.loads(edgetool("quantize", net, *as_onnx).stdout)["evaluation"]]
    judged = ["--reference", tmp_path / "net.tflite", "--data", tmp_path / "eval.npz", "--runs", "0", "--json"]
    docs.append(json.loads(edgetool("evaluate", tmp_path / "q.tflite", *judged).stdout)["evaluation"])
    assert [(d["task"], d["worst_cosine"] >= 0.95) for d in docs] == [("classification", True)] * 2
    # The verdict includes host latency x the profile's factor, which a loaded CI host can push over the budget
    # (seen: host p95 41.7 ms for a 0.04 ms model at load 10): that exit 1 was this test's flaky failure. The
    # test decides on what the load cannot change: the conversion ran, and every row but latency fits.
    result = edgetool("check", net, "--profile", "jetson-nano-onnx", "--runs", "3", "--json", ok=False)
    checked = json.loads(result.stdout)
    assert result.exit_code == (0 if checked["fits"] else 1), result.output
    assert [r["check"] for r in checked["rows"] if not r["ok"]] in ([], ["latency p95"]), result.output
    assert checked["numbers"]["bytes"] > 0 and "Conv" in checked["ops"]
    refused = edgetool("convert", fft, "--to", "tflite", "-o", tmp_path / "fft.tflite", ok=False)
    assert_one_line_error(refused, "onnx2tf cannot convert these ops: DFT", "[unsupported-ops]")
    assert not (tmp_path / "fft.tflite").exists()


def test_auto_min_cosine_on_a_zoo_tflite(tmp_path: Path, third_party: dict[str, Path]) -> None:
    """BlazeFace's scores lose too much in full int8 (0.97); int8 with its most sensitive layer (per-layer
    cosine loss) in float does not reach 0.98 either; int16x8 does, on held-out drawings too."""
    model = third_party["face-detector"]
    for name, seed, n in [("calib", 1, 32), ("eval", 2, 16), ("held", 3, 12)]:
        np.savez(tmp_path / f"{name}.npz", x=face_images(n, seed=seed))
    auto = ["--format", "tflite", "--mode", "auto", "--min-cosine", "0.98", "--max-float-layers", "1"]
    data = ["--calibration", tmp_path / "calib.npz", "--eval", tmp_path / "eval.npz"]
    out = tmp_path / "auto.tflite"
    doc = json.loads(edgetool("quantize", model, *auto, *data, "-o", out, "--json").stdout)
    assert doc["chosen"] == "int16x8" and [v["name"] for v in doc["variants"]][1:3] == ["int8", "int8 + 1 float layer"]
    assert doc["ranked_layers"] and "int8 (worst cosine 0.9" in doc["reason"]
    float32 = doc["variants"][0]["bytes"]  # the float16 weights widened: what the quantizer started from
    assert out.stat().st_size <= 0.5 * float32
    held = ["--reference", model, "--data", tmp_path / "held.npz", "--runs", "0", "--layers", "0", "--json"]
    assert json.loads(edgetool("evaluate", out, *held).stdout)["evaluation"]["worst_cosine"] >= 0.98


def test_weight_only_from_keras_goes_through_the_ai_edge_quantizer(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """A mode the TFLite converter lacks: the Keras model is converted to float TFLite, then quantized."""
    out = tmp_path / "w8.tflite"
    args = ["--format", "tflite", "--mode", "weight-only", "--eval", tiny_models["eval"], "--json", "-o", out]
    doc = json.loads(edgetool("quantize", tiny_models["keras"], *args).stdout)
    assert "ai-edge-quantizer" in doc["tools"] and doc["evaluation"]["worst_cosine"] >= 0.99
    assert doc["evaluation"]["agreement"] >= 0.98


@pytest.mark.parametrize("suffix", [".tflite", ".pt2"])
def test_a_file_that_is_no_model_is_one_line(suffix: str, tmp_path: Path) -> None:
    bad = tmp_path / f"model{suffix}"
    bad.write_bytes(b"not a model at all")
    result = edgetool("convert", bad, "--to", "tflite", "-o", tmp_path / "out.tflite", ok=False)
    assert_one_line_error(result, str(bad), "[model]")
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_auto_on_an_onnx_model_with_dynamic_spatial_dims_to_tflite(tmp_path: Path) -> None:
    """H and W are fixed from the first calibration sample (onnx2tf needs them), then the AI Edge quantizer's
    variants are judged on the worst cosine; the result keeps the ONNX layout and runs on a device."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, "h", "w"])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, "h", "w"])
    graph = helper.make_graph(nodes, "g", [x_info], [y_info], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    images = rng.normal(size=(24, 1, 12, 20)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=images[:16])
    np.savez(tmp_path / "eval.npz", x=images[16:])
    auto = ["--format", "tflite", "--mode", "auto", "--min-cosine", "0.95", "--max-float-layers", "1", "--json"]
    data = ["--calibration", tmp_path / "calib.npz", "--eval", tmp_path / "eval.npz"]
    out = tmp_path / "auto.tflite"
    doc = json.loads(edgetool("quantize", tmp_path / "m.onnx", *auto, *data, "-o", out).stdout)
    assert doc["chosen"] == "int8" and doc["variants"][1]["cosine"] >= 0.95
    got = run_float(out, {"x": images[16:17]})["y"]
    want = run_float(tmp_path / "m.onnx", {"x": images[16:17]}, "onnx")["y"]
    assert got.shape == want.shape == (1, 4, 12, 20)


def test_a_model_onnx2tf_cannot_convert_is_one_line(tmp_path: Path, third_party: dict[str, Path]) -> None:
    """Silero VAD (an If over the sample rate, a recurrent state) does not convert: one line, nothing written."""
    shapes = ["--input-shape", "input=1,512", "--input-shape", "state=2,1,128"]
    out = tmp_path / "vad.tflite"
    result = edgetool("convert", third_party["vad"], "--to", "tflite", *shapes, "-o", out, ok=False)
    assert_one_line_error(result, "onnx2tf could not convert the model", "[model]")
    assert not out.exists()
