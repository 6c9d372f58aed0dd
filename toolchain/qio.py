"""Feeding float data to quantized models and reading their outputs back as floats.

A full-integer model takes int8/uint8 inputs with a scale and zero point: ``q = round(x / s) + z``,
clipped to the type's range; its integer outputs dequantize as ``(q - z) * s``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from device_agent.bundle.manifest import TensorInfo


def to_input(spec: TensorInfo, x: np.ndarray) -> np.ndarray:
    """``x`` (float data) as ``spec`` wants it: quantized for an integer input with a scale, else cast."""
    dtype = np.dtype(spec.dtype)
    if dtype.kind in "iu" and spec.quantization and x.dtype.kind == "f":
        scale, zero = spec.quantization.scale[0], spec.quantization.zero_point[0]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)
    return x.astype(dtype, copy=False)


def from_output(spec: TensorInfo, y: np.ndarray) -> np.ndarray:
    """An output as float32: dequantized when it is an integer tensor with a scale."""
    if y.dtype.kind in "iu" and spec.quantization:
        scale, zero = spec.quantization.scale[0], spec.quantization.zero_point[0]
        return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
    return y.astype(np.float32, copy=False)


def quantize_float_arrays(arrays: Mapping[str, np.ndarray], inputs: Sequence[TensorInfo]) -> dict[str, np.ndarray]:
    """``arrays`` (keyed by input name, or ``x`` for a single input) with float data for integer,
    quantized inputs quantized with the input's scale and zero point; everything else unchanged."""
    out = dict(arrays)
    for spec in inputs:
        key = spec.name if spec.name in out else "x" if len(inputs) == 1 and "x" in out else None
        if key is not None and out[key].dtype.kind == "f" and np.dtype(spec.dtype).kind in "iu" and spec.quantization:
            out[key] = to_input(spec, out[key])
    return out


def feeds(inputs: Sequence[TensorInfo], data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float data keyed by input name, converted for each input."""
    return {spec.name: to_input(spec, data[spec.name]) for spec in inputs}
