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
        used = _run_backend(source, kind, produced, options, calibration)
        # The file reaches ``output`` only once its device runtime has loaded and run it.
        same_kind = source if kind.value == options.format else None
        sample = first_sample(calibration or check_data, produced, options.format)
        check_model(options.format, produced, sample, same_kind)
        atomic_write(output, produced.read_bytes())
    return QuantizeResult(output, options, output.stat().st_size, time.perf_counter() - start, used)


def _run_backend(
    source: Path, kind: ModelKind, output: Path, options: QuantizeOptions, calibration: Path | None
) -> int:
    if isinstance(options, TFLiteOptions):
        from toolchain.quantize import tflite

        if not kind.is_float_source:
            raise QuantizeError(
                f"{source}: TFLite quantization needs the float source model (.keras, .h5 or a SavedModel "
                f"directory); a {kind} model cannot be re-quantized by the TFLite converter"
            )
        return tflite.quantize(source, kind, output, options, calibration)
    from toolchain.quantize import onnx

    return onnx.quantize(source, kind, output, options, calibration)
