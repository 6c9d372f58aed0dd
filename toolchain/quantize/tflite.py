"""TFLite post-training quantization through the TFLite converter (float16, dynamic, int8, int16x8).

TensorFlow is reached through ``toolchain.backends.tensorflow``. Calibration samples are streamed
into the converter's ``representative_dataset`` one at a time. Mixed models (some layers kept in
float) go through the quantization debugger's denylist.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.fsutil import atomic_write
from toolchain.calibration import SampleStream, open_samples
from toolchain.errors import QuantizeError
from toolchain.quantize.options import TFLiteOptions
from toolchain.sources import ModelKind


def quantize(source: Path, kind: ModelKind, output: Path, options: TFLiteOptions, calibration: Path | None) -> int:
    """Quantize the float ``source`` into ``output``; returns the number of calibration samples used.

    Raises:
        ModelError, UnsupportedOpsError: the source cannot be loaded or converted.
        DataError: the calibration data does not fit the model.
    """
    from toolchain.backends import tensorflow as tfb

    loaded = tfb.TFSource(source, kind)
    stream = open_samples(calibration, loaded.inputs, options.samples) if calibration else None
    data = convert(loaded, options, stream)
    atomic_write(output, data)
    return len(stream) if stream else 0


def convert(loaded: Any, options: TFLiteOptions, stream: SampleStream | None) -> bytes:
    """Quantized flatbuffer bytes for a loaded ``TFSource``."""
    from toolchain.backends import tensorflow as tfb

    converter = configure(loaded.converter(), options, stream, strict=not options.float_nodes)
    if options.float_nodes:
        if stream is None:
            raise QuantizeError("a mixed int8 model needs calibration data")
        dbg = tfb.debugger(converter, dataset(stream), options.float_nodes)
        with tfb.quiet_stdout():
            result: bytes = dbg.get_nondebug_quantized_model()
        return result
    return tfb.convert_tflite(converter)


def dataset(stream: SampleStream) -> Any:
    """A ``representative_dataset`` callable: one sample per step, a list in signature input order."""

    def gen() -> Iterator[list[np.ndarray]]:
        for sample in stream:
            yield [sample[name] for name in stream.names]

    return gen


def configure(converter: Any, options: TFLiteOptions, stream: SampleStream | None, strict: bool = True) -> Any:
    """Set ``converter`` up for ``options.mode``; returns it.

    ``strict`` int8 means full integer (every op int8, I/O as ``options.io``); the quantization
    debugger needs it off (float I/O, float fallback allowed) to keep denylisted layers in float.

    Raises:
        QuantizeError: a calibrated mode without calibration samples.
    """
    from toolchain.backends.tensorflow import tf

    ops = tf.lite.OpsSet
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if options.mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif options.mode in ("int8", "int16x8"):
        if stream is None:
            raise QuantizeError(f"--mode {options.mode} needs calibration data")
        converter.representative_dataset = dataset(stream)
    if options.mode == "int8" and strict:
        converter.target_spec.supported_ops = [ops.TFLITE_BUILTINS_INT8]
        io_type = {"int8": tf.int8, "uint8": tf.uint8, "float": tf.float32}[options.io]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    elif options.mode == "int16x8":
        converter.target_spec.supported_ops = [ops.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    return converter


def layer_errors(source: Path, kind: ModelKind, stream: SampleStream) -> list[dict[str, Any]]:
    """Per-layer int8 error of the float ``source`` (TFLite quantization debugger), worst first.

    Each row: ``layer`` (the op), ``tensor``, ``rmse_scale`` (RMSE in units of the tensor's
    quantization step; 0.29 is pure rounding noise), ``mse`` and ``max_abs_error``.
    """
    from toolchain.backends import tensorflow as tfb

    loaded = tfb.TFSource(source, kind)
    converter = configure(loaded.converter(), TFLiteOptions("int8", io="float"), stream, strict=False)
    rows = []
    for row in tfb.layer_statistics(tfb.debugger(converter, dataset(stream))):
        scale = float(row.get("scale") or 0.0)
        mse = float(row.get("mean_squared_error") or 0.0)
        rows.append(
            {
                "layer": row.get("op_name", ""),
                "tensor": row.get("tensor_name", ""),
                "rmse_scale": (mse**0.5) / scale if scale else 0.0,
                "mse": mse,
                "max_abs_error": float(row.get("max_abs_error") or 0.0),
            }
        )
    return sorted(rows, key=lambda r: -r["mse"])
