"""Normalise a .tflite from a model zoo before it is quantized: what the LiteRT quantizer needs.

Zoo and vendor files are often float16-weight models (a DEQUANTIZE op turns each float16 constant
into the float32 weight a convolution reads), carry no signature def, and use the old
``deprecated_builtin_code`` op codes. The AI Edge quantizer reads weights as constant float32
tensors and drives the model through a signature, so on such a file as it is it either changes
nothing (1.0x) or refuses it. ``normalise`` rewrites the flatbuffer: float16 constants behind a
DEQUANTIZE become float32 constants read directly (the op goes), a ``serving_default`` signature
naming the subgraph's inputs and outputs is added when there is none, and op codes are upgraded.

Hand-written on LiteRT's own flatbuffer schema API (``ai_edge_litert.schema_py_generated`` and
``ai_edge_litert.tools.flatbuffer_utils``): no maintained library performs this rewrite (the TFLite
converter takes only TensorFlow sources, and the quantizer expects it done), and the rewrite is a
few list edits on the schema's object API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from toolchain.errors import ModelError

SIGNATURE_KEY = "serving_default"
_FLOAT32, _FLOAT16 = 0, 1  # tflite TensorType values
_DEQUANTIZE = 6  # tflite BuiltinOperator.DEQUANTIZE


@dataclass(frozen=True)
class Intake:
    """What ``normalise`` changed (recorded in reports): float16 weights widened, signature added."""

    data: bytes
    float16_weights: int
    added_signature: bool
    upgraded_op_codes: int

    @property
    def changed(self) -> bool:
        return bool(self.float16_weights or self.added_signature or self.upgraded_op_codes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "float16_weights_widened": self.float16_weights,
            "added_signature": self.added_signature,
            "upgraded_op_codes": self.upgraded_op_codes,
        }


def normalise(data: bytes, name: str = "model") -> Intake:
    """The flatbuffer ``data`` rewritten as described in the module docstring.

    Raises:
        ModelError: ``data`` is not a TFLite flatbuffer.
    """
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    try:
        model = fbu.read_model_from_bytearray(bytearray(data))
    except Exception as exc:  # flatbuffers raises struct.error, IndexError, ... on garbage
        raise ModelError(f"{name} is not a TFLite flatbuffer (it does not parse: {type(exc).__name__})") from None
    upgraded = _upgrade_op_codes(model)
    widened = 0
    for index, subgraph in enumerate(model.subgraphs or []):
        count = _widen_float16(model, subgraph)
        if count:
            _drop_unused_tensors(model, index)
        widened += count
    added = _add_signature(model)
    if not (upgraded or widened or added):
        return Intake(data, 0, False, 0)
    return Intake(bytes(fbu.convert_object_to_bytearray(model)), widened, added, upgraded)


def _upgrade_op_codes(model: Any) -> int:
    """Fill ``builtinCode`` from ``deprecatedBuiltinCode`` (files written before schema v3a)."""
    count = 0
    for code in model.operatorCodes or []:
        if code.deprecatedBuiltinCode > code.builtinCode:
            code.builtinCode = code.deprecatedBuiltinCode
            count += 1
    return count


def _widen_float16(model: Any, subgraph: Any) -> int:
    """Replace each DEQUANTIZE of a float16 constant by a float32 constant; returns how many."""
    codes = model.operatorCodes or []
    keep, widened = [], 0
    for op in subgraph.operators or []:
        code = codes[op.opcodeIndex]
        src = subgraph.tensors[op.inputs[0]] if op.inputs else None
        constant = src is not None and src.type == _FLOAT16 and _buffer_data(model, src) is not None
        if src is None or max(code.builtinCode, code.deprecatedBuiltinCode) != _DEQUANTIZE or not constant:
            keep.append(op)
            continue
        half = np.frombuffer(bytes(_buffer_data(model, src)), np.float16)
        out = subgraph.tensors[op.outputs[0]]
        model.buffers[src.buffer].data = np.frombuffer(half.astype("<f4").tobytes(), np.uint8)
        out.buffer, src.buffer = src.buffer, 0  # the output tensor becomes the float32 constant
        widened += 1
    subgraph.operators = keep
    return widened


def _drop_unused_tensors(model: Any, index: int) -> None:
    """Remove tensors no op or subgraph boundary uses (the float16 originals), renumbering the rest.

    The interpreter leaves such tensors unallocated, and the quantizer's calibrator reads every tensor.
    """
    subgraph = model.subgraphs[index]
    used = {*subgraph.inputs, *subgraph.outputs}
    for op in subgraph.operators or []:
        used.update(op.inputs or [])
        used.update(op.outputs or [])
        used.update(op.intermediates or [])
    used.discard(-1)
    new = {old: i for i, old in enumerate(sorted(used))}

    def remap(indices: Any) -> list[int]:
        return [new[i] if i >= 0 else -1 for i in indices or []]

    subgraph.tensors = [subgraph.tensors[old] for old in sorted(used)]
    subgraph.inputs, subgraph.outputs = remap(subgraph.inputs), remap(subgraph.outputs)
    for op in subgraph.operators or []:
        op.inputs, op.outputs, op.intermediates = remap(op.inputs), remap(op.outputs), remap(op.intermediates)
    for sig in model.signatureDefs or []:
        if sig.subgraphIndex == index:
            for entry in [*(sig.inputs or []), *(sig.outputs or [])]:
                entry.tensorIndex = new[entry.tensorIndex]


def _buffer_data(model: Any, tensor: Any) -> Any:
    data = model.buffers[tensor.buffer].data if tensor.buffer else None
    return data if data is not None and len(data) else None


def _add_signature(model: Any) -> bool:
    from ai_edge_litert import schema_py_generated as schema

    if model.signatureDefs or not model.subgraphs:
        return False
    subgraph = model.subgraphs[0]

    def maps(indices: list[int]) -> list[Any]:
        out = []
        for index in indices:
            entry = schema.TensorMapT()
            entry.name = _name(subgraph.tensors[index])
            entry.tensorIndex = index
            out.append(entry)
        return out

    sig = schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = SIGNATURE_KEY, 0
    sig.inputs, sig.outputs = maps(list(subgraph.inputs)), maps(list(subgraph.outputs))
    model.signatureDefs = [sig]
    return True


def _name(tensor: Any) -> str:
    raw = tensor.name
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
