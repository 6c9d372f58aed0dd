"""Post-training quantization behind one small interface, one module per backend.

``tflite.py`` drives the TFLite converter (through ``toolchain.backends.tensorflow``); ``onnx.py``
is the only module importing ``onnxruntime.quantization``; ``auto.py`` searches variants against an
accuracy bound. Options are typed dataclasses; calibration data arrives as a ``SampleStream``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from toolchain.errors import QuantizeError
from toolchain.sources import model_kind

TFLiteMode = Literal["float16", "dynamic", "int8", "int16x8"]
OnnxMode = Literal["dynamic", "int8"]
IOType = Literal["int8", "uint8", "float"]
Calibrate = Literal["minmax", "entropy", "percentile"]

TFLITE_MODES: tuple[str, ...] = ("float16", "dynamic", "int8", "int16x8")
ONNX_MODES: tuple[str, ...] = ("dynamic", "int8")
CALIBRATED = {("tflite", "int8"), ("tflite", "int16x8"), ("onnx", "int8")}
DEFAULT_SAMPLES = 200  # calibration samples used unless --samples says otherwise


@dataclass(frozen=True)
class TFLiteOptions:
    """TFLite converter settings. ``io`` applies to full-integer int8 only; ``float_nodes`` are tensor
    names kept in float (a mixed model, through the quantization debugger's denylist)."""

    mode: TFLiteMode
    io: IOType = "int8"
    samples: int | None = DEFAULT_SAMPLES
    float_nodes: tuple[str, ...] = ()

    format: str = field(default="tflite", init=False)


@dataclass(frozen=True)
class OnnxOptions:
    """onnxruntime.quantization settings. ``int8`` is static QDQ (activations and weights int8);
    ``float_nodes`` are node names excluded from quantization (a mixed model)."""

    mode: OnnxMode
    per_channel: bool = False
    calibrate: Calibrate = "minmax"
    samples: int | None = DEFAULT_SAMPLES
    preprocess: bool = True  # onnxruntime's quant_pre_process (shape inference + graph optimisation)
    float_nodes: tuple[str, ...] = ()

    format: str = field(default="onnx", init=False)


QuantizeOptions = TFLiteOptions | OnnxOptions


@dataclass(frozen=True)
class QuantizeResult:
    output: Path
    options: QuantizeOptions
    bytes: int
    seconds: float
    calibration_samples: int

    def settings(self) -> dict[str, Any]:
        """The options as plain JSON values (for reports and bundle provenance)."""
        return settings_dict(self.options)


def settings_dict(options: QuantizeOptions) -> dict[str, Any]:
    """Quantization options as plain JSON values."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}


def needs_calibration(options: QuantizeOptions) -> bool:
    return (options.format, options.mode) in CALIBRATED


def quantize(source: Path, output: Path, options: QuantizeOptions, calibration: Path | None) -> QuantizeResult:
    """Quantize ``source`` as ``options`` say and write ``output``.

    Raises:
        QuantizeError: the source cannot be quantized to this format, or calibration is missing.
        ModelError: the source is missing or corrupt.
        DataError: the calibration data does not fit the model.
    """
    kind = model_kind(source)
    if needs_calibration(options) and calibration is None:
        raise QuantizeError(f"--mode {options.mode} needs --calibration data (.npz, .npy or a directory of .npy)")
    start = time.perf_counter()
    if isinstance(options, TFLiteOptions):
        from toolchain.quantize import tflite

        if not kind.is_float_source:
            raise QuantizeError(
                f"{source}: TFLite quantization needs the float source model (.keras, .h5 or a SavedModel "
                f"directory); a {kind} model cannot be re-quantized by the TFLite converter"
            )
        used = tflite.quantize(source, kind, output, options, calibration)
    else:
        from toolchain.quantize import onnx

        used = onnx.quantize(source, kind, output, options, calibration)
    return QuantizeResult(output, options, output.stat().st_size, time.perf_counter() - start, used)
