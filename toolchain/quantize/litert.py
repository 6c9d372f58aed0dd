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

    if not is_float(float_tflite):
        raise QuantizeError("the .tflite is already quantized (it has tensors with scales); start from the float model")

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


def is_float(tflite: bytes) -> bool:
    """Whether no tensor of ``tflite`` carries quantization scales (the quantizer's own test)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    return bool(tfl_flatbuffer_utils.is_float_model(tfl_flatbuffer_utils.read_model(bytearray(tflite))))


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
    for name in options.float_nodes:  # an op's scope is its output tensor names, each followed by ";"
        manager.add_quantization_config(
            f"(^|;){re.escape(name)};", TFLOperationName.ALL_SUPPORTED, algorithm_key=AlgorithmName.NO_QUANTIZE
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


def layer_errors(float_tflite: bytes, quantized: bytes, stream: SampleStream) -> list[dict[str, Any]]:
    """Each layer's sensitivity on the ``--min-cosine`` measure, most sensitive first.

    The AI Edge quantizer's validator gives every tensor's cosine similarity against the float model
    on ``stream``; a layer's ``cosine_loss`` is how much cosine it loses itself: its inputs' lowest
    cosine minus its output's (error inherited from earlier layers is not its own). Each row:
    ``layer`` and ``tensor`` (the output tensor name, how the quantizer names an op), ``cosine``
    and ``cosine_loss``.
    """
    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer.utils.validation_utils import ValidationErrorMetric

    try:
        with _quiet():
            q = quantizer.Quantizer(bytearray(float_tflite), previous_quantized_model=bytearray(quantized))
            result = q.validate(
                {SIGNATURE: list(_samples(stream))},
                error_metrics=[ValidationErrorMetric.COSINE_SIMILARITY],
                num_threads=1,
            )
    except Exception as exc:  # the validator raises ValueError/RuntimeError with its reason
        raise QuantizeError(f"the AI Edge quantizer's validator failed: {str(exc)[:300]}") from None
    cosine = {k: float(v.get("cosine_similarity", 1.0)) for k, v in result.get_all_tensor_results().items()}
    rows = []
    for inputs, output in _op_edges(float_tflite):
        if output in cosine:
            before = min((cosine[i] for i in inputs if i in cosine), default=1.0)
            loss = before - cosine[output]
            rows.append({"layer": output, "tensor": output, "cosine": cosine[output], "cosine_loss": loss})
    return sorted(rows, key=lambda r: -r["cosine_loss"])


def _op_edges(tflite: bytes) -> list[tuple[list[str], str]]:
    """(input tensor names, first output tensor name) of each op of the main subgraph."""
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model_from_bytearray(bytearray(tflite))
    tensors = model.subgraphs[0].tensors

    def name(index: int) -> str:
        raw = tensors[index].name
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)

    return [
        ([name(i) for i in op.inputs if i >= 0], name(op.outputs[0]))
        for op in model.subgraphs[0].operators or []
        if op.outputs
    ]
