"""Feeding float data to quantized models and reading their outputs back as floats.

A full-integer model takes int8/uint8 inputs with a scale and zero point: ``q = round(x / s) + z``,
clipped to the type's range; its integer outputs dequantize as ``(q - z) * s``. The arithmetic is
the device runtime's (``device_agent.runtime.base.quantize``/``dequantize``); this adds the casts
evaluation needs (float64 data for a float32 input, float32 scores out of every model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from device_agent.bundle.manifest import TensorInfo
from device_agent.runtime.base import dequantize, quantize


def to_input(spec: TensorInfo, x: np.ndarray) -> np.ndarray:
    """``x`` (float data) as ``spec`` wants it: quantized for an integer input with a scale, else cast."""
    return quantize(x, spec).astype(spec.dtype, copy=False)


def from_output(spec: TensorInfo, y: np.ndarray) -> np.ndarray:
    """An output as float32: dequantized when it is an integer tensor with a scale."""
    return dequantize(y, spec).astype(np.float32, copy=False)


def feeds(inputs: Sequence[TensorInfo], data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float data keyed by input name, converted for each input."""
    return {spec.name: to_input(spec, data[spec.name]) for spec in inputs}
