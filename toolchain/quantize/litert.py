"""Quantizing a float .tflite with Google's AI Edge quantizer: the only module importing ai_edge_quantizer.

The TFLite converter quantizes only while converting from TensorFlow; a .tflite from a model zoo,
or one converted from ONNX or PyTorch, goes through ``ai_edge_quantizer`` instead. The flatbuffer is
normalised first (``toolchain.tflite_intake``: float16 weights widened, a signature added). Modes:

- ``weight-only``: int8 weights dequantized before float kernels (``weight_only_wi8_afp32``);
- ``float16``: float16 weights (the ``FLOAT_CASTING`` algorithm), float kernels;
- ``dynamic``: int8 weights, activations quantized at run time (``dynamic_wi8_afp32``);
- ``int8``: full integer, int8 weights and activations, int8 input and output (``static_wi8_ai8``,
  calibrated on the samples given);
- ``int16x8``: int16 activations, int8 weights (``static_wi8_ai16``, calibrated).

``float_nodes`` (tensor names) are left in float (the quantizer's ``NO_QUANTIZE`` for those ops).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from typing import Any

from toolchain.calibration import SampleStream
from toolchain.errors import QuantizeError
from toolchain.quantize.options import TFLiteOptions

LITERT_MODES: tuple[str, ...] = ("weight-only", "float16", "dynamic", "int8", "int16x8")
SIGNATURE = "serving_default"


def version() -> str:
    """The installed ai-edge-quantizer version (for provenance)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("ai-edge-quantizer")
    except PackageNotFoundError:
        return "unknown"


def quantize(float_tflite: bytes, options: TFLiteOptions, stream: SampleStream | None) -> bytes:
    """``float_tflite`` (a normalised float flatbuffer with a signature) quantized as ``options`` say.

    Raises:
        QuantizeError: a mode this quantizer lacks, a calibrated mode without samples, or the
            quantizer refusing the model (its reason, in one line).
    """
    if options.mode not in LITERT_MODES:
        raise QuantizeError(
            f"--mode {options.mode} is not available for a .tflite (or ONNX/PyTorch) source; "
            f"use one of {', '.join(LITERT_MODES)}"
        )
    if options.mode == "int8" and options.io != "int8":
        raise QuantizeError(f"--io {options.io}: a .tflite source quantizes to int8 input and output only")
    recipe = _recipe(options)
    from ai_edge_quantizer import quantizer

    try:
        with _quiet():
            q = quantizer.Quantizer(bytearray(float_tflite), recipe)
            calibration = None
            if q.need_calibration:
                if stream is None:
                    raise QuantizeError(f"--mode {options.mode} needs --calibration data")
                calibration = q.calibrate({SIGNATURE: list(_samples(stream))}, num_threads=1)
            result = q.quantize(calibration, enable_progress_report=False)
    except QuantizeError:
        raise
    except Exception as exc:  # the quantizer raises ValueError/RuntimeError with its reason
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise QuantizeError(f"the AI Edge quantizer refused the model: {reason}") from None
    return bytes(result.quantized_model)


def _recipe(options: TFLiteOptions) -> Any:
    from ai_edge_quantizer import recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName

    manager = recipe_manager.RecipeManager()
    everything = (".*", TFLOperationName.ALL_SUPPORTED)
    if options.mode == "weight-only":
        manager.add_weight_only_config(*everything, num_bits=8)
    elif options.mode == "float16":
        manager.add_weight_only_config(*everything, num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING)
    elif options.mode == "dynamic":
        manager.add_dynamic_config(*everything, num_bits=8)
    else:
        bits = 8 if options.mode == "int8" else 16
        manager.add_static_config(*everything, activation_num_bits=bits, weight_num_bits=8)
    for name in options.float_nodes:
        manager.add_quantization_config(
            f"^{re.escape(name)}$", TFLOperationName.ALL_SUPPORTED, algorithm_key=AlgorithmName.NO_QUANTIZE
        )
    return manager.get_quantization_recipe()


def _samples(stream: SampleStream) -> Iterator[dict[str, Any]]:
    for sample in stream:
        yield {name: sample[name] for name in stream.names}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer's progress bars and notices go to Python's stderr; keep them off the terminal."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield
