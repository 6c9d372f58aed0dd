"""Post-training quantization behind one small interface, one module per backend.

``tflite.py`` drives the TFLite converter (through ``toolchain.backends.tensorflow``); ``onnx.py``
is the only module importing ``onnxruntime.quantization``; ``auto.py`` searches variants against an
accuracy bound. Options are typed dataclasses; calibration data arrives as a ``SampleStream``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from device_agent.fsutil import atomic_write
from toolchain.errors import QuantizeError
from toolchain.quantize.options import (
    CALIBRATED,
    CONVERTER_MODES,
    DEFAULT_SAMPLES,
    ONNX_MODES,
    TFLITE_MODES,
    Calibrate,
    IOType,
    OnnxMode,
    OnnxOptions,
    QuantizeOptions,
    QuantizeResult,
    TFLiteMode,
    TFLiteOptions,
    needs_calibration,
    settings_dict,
)
from toolchain.sources import ModelKind, model_kind
from toolchain.validate import check_model, first_sample

__all__ = [
    "CALIBRATED",
    "DEFAULT_SAMPLES",
    "ONNX_MODES",
    "TFLITE_MODES",
    "Calibrate",
    "IOType",
    "OnnxMode",
    "OnnxOptions",
    "QuantizeOptions",
    "QuantizeResult",
    "TFLiteMode",
    "TFLiteOptions",
    "needs_calibration",
    "quantize",
    "settings_dict",
]


def quantize(
    source: Path, output: Path, options: QuantizeOptions, calibration: Path | None, check_data: Path | None = None
) -> QuantizeResult:
    """Quantize ``source`` as ``options`` say and write ``output`` once it loads and runs in its runtime
    on the first sample of ``calibration`` (or ``check_data``; see ``toolchain.validate``).

    Raises:
        QuantizeError: the source cannot be quantized to this format, or calibration is missing.
        ModelError: the source is missing or corrupt.
        DataError: the calibration data does not fit the model.
    """
    kind = model_kind(source)
    if needs_calibration(options) and calibration is None:
        raise QuantizeError(f"--mode {options.mode} needs --calibration data (.npz, .npy or a directory of .npy)")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgetool-q-") as tmp:
        produced = Path(tmp) / f"quantized.{options.format}"
        tools: dict[str, str] = {}
        used = _run_backend(source, kind, produced, options, (calibration, tools))
        # The file reaches ``output`` only once its device runtime has loaded and run it.
        same_kind = source if kind.value == options.format else None
        sample = first_sample(calibration or check_data, produced, options.format)
        check_model(options.format, produced, sample, same_kind)
        atomic_write(output, produced.read_bytes())
    seconds = time.perf_counter() - start
    return QuantizeResult(output, options, output.stat().st_size, seconds, used, tools)


def _run_backend(
    source: Path, kind: ModelKind, output: Path, options: QuantizeOptions, data: tuple[Path | None, dict[str, str]]
) -> int:
    """Quantize into ``output`` with the backend that fits the source; record the tools used in ``data[1]``."""
    calibration, tools = data
    if isinstance(options, TFLiteOptions):
        if kind.is_float_source and options.mode in CONVERTER_MODES:
            from toolchain.backends.tensorflow import tf
            from toolchain.quantize import tflite

            tools["tensorflow"] = str(tf.__version__)
            return tflite.quantize(source, kind, output, options, calibration)
        return _litert(source, kind, output, options, data)
    from toolchain.quantize import onnx

    if kind is ModelKind.PT2:
        from toolchain.convert import convert

        converted = convert(source, "onnx", output.with_name("from_torch.onnx"))
        tools.update(converted.tools)
        source, kind = converted.output, ModelKind.ONNX
    return onnx.quantize(source, kind, output, options, calibration)


def _litert(
    source: Path, kind: ModelKind, output: Path, options: TFLiteOptions, data: tuple[Path | None, dict[str, str]]
) -> int:
    """Any source as a normalised float .tflite (converted when it is not one), then the AI Edge quantizer."""
    from device_agent.runtime import load_runtime
    from toolchain.calibration import open_samples
    from toolchain.convert import convert
    from toolchain.quantize import litert

    calibration, tools = data
    shapes = None
    if kind is ModelKind.ONNX and calibration is not None:
        shapes = {k: v.shape for k, v in (first_sample(calibration, source, "onnx") or {}).items()}
    converted = convert(source, "tflite", output.with_name("float.tflite"), input_shapes=shapes)
    tools.update(converted.tools)
    tools["ai-edge-quantizer"] = litert.version()
    float_bytes = converted.output.read_bytes()
    runtime = load_runtime("tflite", float_bytes)
    stream = open_samples(calibration, runtime.inputs, options.samples) if calibration else None
    atomic_write(output, litert.quantize(float_bytes, options, stream))
    return len(stream) if stream else 0
