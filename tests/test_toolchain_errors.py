"""Bad input to the model verbs: one clear line naming the problem, exit 1, never a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.quant_helpers import assert_one_line_error, edgetool
from toolchain.npzio import save_npz


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    path.write_bytes(save_npz(arrays))
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(b"this is not a model\x00" * 20)
    return path


def test_missing_calibration_file(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    int8 = ["--format", "onnx", "--mode", "int8", "--calibration", tmp_path / "nope.npz"]
    result = edgetool("quantize", tiny_models["onnx"], *int8, "-o", tmp_path / "q.onnx", ok=False)
    assert_one_line_error(result, "nope.npz: no such file", "[data]")


def test_calibration_needed_for_int8(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    result = edgetool(
        "quantize", tiny_models["keras"], "--format", "tflite", "--mode", "int8", "-o", tmp_path / "q.tflite", ok=False
    )
    assert_one_line_error(result, "--mode int8 needs --calibration", "[quantize]")


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"x": np.zeros((4, 8, 8), np.float32)}, "needs samples of shape [8, 8, 1], the data is [4, 8, 8]"),
        ({"x": np.zeros((4, 9, 8, 1), np.float32)}, "needs samples of shape [8, 8, 1], the data is [4, 9, 8, 1]"),
        ({"x": np.zeros((4, 8, 8, 1), np.int32)}, "needs float32, the data is int32"),
        ({"pixels": np.zeros((4, 8, 8, 1), np.float32)}, "has no array for input 'image' (keys: pixels)"),
    ],
)
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_calibration_that_does_not_fit_the_model(
    fmt: str, arrays: dict[str, np.ndarray], fragment: str, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    source = tiny_models["onnx" if fmt == "onnx" else "keras"]
    bad = _npz(tmp_path / "bad.npz", **arrays)
    int8 = ["--format", fmt, "--mode", "int8"]
    result = edgetool("quantize", source, *int8, "--calibration", bad, "-o", tmp_path / f"q.{fmt}", ok=False)
    assert_one_line_error(result, fragment, "[data]")
    assert not (tmp_path / f"q.{fmt}").exists()


def test_unreadable_calibration_file(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    garbage = _garbage(tmp_path / "c.npz")
    int8 = ["--format", "onnx", "--mode", "int8"]
    result = edgetool(
        "quantize", tiny_models["onnx"], *int8, "--calibration", garbage, "-o", tmp_path / "q.onnx", ok=False
    )
    assert_one_line_error(result, "is not a readable .npz file", "[data]")


@pytest.mark.parametrize(
    ("name", "command", "fragment"),
    [
        (
            "m.keras",
            ["quantize", "--format", "tflite", "--mode", "dynamic", "-o", "{out}.tflite"],
            "cannot load Keras model",
        ),
        (
            "m.onnx",
            ["quantize", "--format", "onnx", "--mode", "dynamic", "-o", "{out}.onnx"],
            "ONNX Runtime cannot load",
        ),
        ("m.keras", ["convert", "--to", "onnx", "-o", "{out}.onnx"], "cannot load Keras model"),
        ("m.onnx", ["convert", "--to", "onnx", "-o", "{out}.onnx"], "is not a valid ONNX model"),
        ("m.tflite", ["check", "--profile", "rpi4-litert"], "failed"),
    ],
)
def test_corrupt_model(name: str, command: list[str], fragment: str, tmp_path: Path) -> None:
    model = _garbage(tmp_path / name)
    args = [a.format(out=tmp_path / "out") for a in command]
    result = edgetool(args[0], model, *args[1:], ok=False)
    assert_one_line_error(result, fragment)


def test_corrupt_candidate_in_evaluate(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    garbage = _garbage(tmp_path / "c.tflite")
    result = edgetool(
        "evaluate", garbage, "--reference", tiny_models["tflite"], "--data", tiny_models["eval"], ok=False
    )
    assert_one_line_error(result, "LiteRT cannot load", "[runtime]")


def test_tflite_cannot_become_onnx(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """A .tflite quantizes to TFLite (the AI Edge quantizer, tests/test_converters.py), never to ONNX."""
    result = edgetool("convert", tiny_models["tflite"], "--to", "onnx", "-o", tmp_path / "m.onnx", ok=False)
    assert_one_line_error(result, "TFLite → ONNX is not supported", "[model]")
    dynamic = ["--format", "onnx", "--mode", "dynamic"]
    result = edgetool("quantize", tiny_models["tflite"], *dynamic, "-o", tmp_path / "q.onnx", ok=False)
    assert_one_line_error(result, "ONNX quantization needs an ONNX, Keras or SavedModel source", "[quantize]")


def test_mode_not_available_for_format(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    float16 = ["--format", "onnx", "--mode", "float16"]
    result = edgetool("quantize", tiny_models["onnx"], *float16, "-o", tmp_path / "q.onnx", ok=False)
    assert_one_line_error(result, "--format onnx has no mode 'float16'")


def test_unknown_profile(tiny_models: dict[str, Path]) -> None:
    result = edgetool("check", tiny_models["tflite"], "--profile", "rpi9-litert", ok=False)
    assert_one_line_error(result, "unknown profile 'rpi9-litert'; built-ins: rpi4-litert", "[profile]")


def test_malformed_profile_file(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text('[mine]\narch = "aarch64"\n')
    result = edgetool("check", tiny_models["tflite"], "--profile", bad, ok=False)
    assert_one_line_error(result, "[mine] missing keys", "[profile]")


def test_unknown_model_type(tmp_path: Path) -> None:
    model = _garbage(tmp_path / "m.pt")
    result = edgetool("convert", model, "--to", "onnx", "-o", tmp_path / "o.onnx", ok=False)
    assert_one_line_error(result, "unknown model type .pt", "[model]")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["--format", "tflite", "--mode", "dynamic", "--io", "uint8"],
            "--io applies to --format tflite --mode int8 only",
        ),
        (["--format", "tflite", "--mode", "int8", "--per-channel"], "--per-channel applies to --format onnx only"),
        (["--format", "onnx", "--mode", "dynamic", "--calibrate", "entropy"], "--calibrate applies to ONNX int8 only"),
    ],
)
def test_options_that_do_not_apply_are_refused(
    args: list[str], fragment: str, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    calibration = ["--calibration", tiny_models["calibration"]]
    result = edgetool("quantize", tiny_models["keras"], *args, *calibration, "-o", tmp_path / "q.out", ok=False)
    assert_one_line_error(result, fragment, "[quantize]")
