"""Quantization settings and results: typed options per backend, shared by the backends and callers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

TFLiteMode = Literal["float16", "dynamic", "int8", "int16x8", "weight-only"]
OnnxMode = Literal["dynamic", "int8"]
IOType = Literal["int8", "uint8", "float"]
Calibrate = Literal["minmax", "entropy", "percentile"]

TFLITE_MODES: tuple[str, ...] = ("float16", "dynamic", "int8", "int16x8", "weight-only")
CONVERTER_MODES: tuple[str, ...] = ("float16", "dynamic", "int8", "int16x8")  # the TFLite converter's (Keras)
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
    # Weights in 7 bits (onnxruntime's reduced range, [-64, 64] for int8): its x86 int8 kernels on CPUs
    # without VNNI (SSE4.1, AVX2, AVX-512 without VNNI) multiply u8 activations by s8 weights with
    # VPMADDUBSW, whose int16 pair sums saturate on full-range 8-bit weights, and the model then computes
    # far from what was calibrated (digits-cnn int8 on an AVX2 host: max score error 0.158 vs 0.023).
    reduce_range: bool = True

    format: str = field(default="onnx", init=False)


QuantizeOptions = TFLiteOptions | OnnxOptions


@dataclass(frozen=True)
class QuantizeResult:
    output: Path
    options: QuantizeOptions
    bytes: int
    seconds: float
    calibration_samples: int
    tools: dict[str, str] = field(default_factory=dict)  # converters and quantizers used → version

    def settings(self) -> dict[str, Any]:
        """The options as plain JSON values (for reports and bundle provenance)."""
        return settings_dict(self.options)


def settings_dict(options: QuantizeOptions) -> dict[str, Any]:
    """Quantization options as plain JSON values."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}


def needs_calibration(options: QuantizeOptions) -> bool:
    return (options.format, options.mode) in CALIBRATED
