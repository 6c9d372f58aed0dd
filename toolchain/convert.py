"""``edgetool convert``: a Keras, SavedModel or ONNX model to a float32 TFLite or ONNX model."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from device_agent.fsutil import atomic_write
from toolchain.errors import ModelError
from toolchain.sources import ModelKind, model_kind
from toolchain.validate import check_model

TARGETS = ("tflite", "onnx")
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class ConvertResult:
    source: Path
    source_kind: ModelKind
    output: Path
    target: str
    bytes: int


def convert(source: Path, target: str, output: Path, opset: int = DEFAULT_OPSET) -> ConvertResult:
    """Convert ``source`` to ``target`` (``tflite`` or ``onnx``) and write ``output`` atomically.

    Raises:
        ModelError: unknown or corrupt source, or a conversion this tool cannot do (ONNX → TFLite).
        UnsupportedOpsError: the model uses ops the target lacks (the message lists them).
    """
    kind = model_kind(source)
    if target not in TARGETS:
        raise ModelError(f"unknown target {target!r}; use tflite or onnx")
    data = _convert_bytes(source, kind, target, opset)
    with tempfile.TemporaryDirectory(prefix="edgetool-c-") as tmp:
        produced = Path(tmp) / f"converted.{target}"
        produced.write_bytes(data)
        check_model(target, produced, None, source if kind.value == target else None)
    atomic_write(output, data)
    return ConvertResult(source, kind, output, target, len(data))


def _convert_bytes(source: Path, kind: ModelKind, target: str, opset: int) -> bytes:
    if kind is ModelKind.ONNX:
        if target == "tflite":
            raise ModelError(f"{source}: ONNX → TFLite is not supported; convert from the Keras/SavedModel source")
        return onnx_to_opset(source, opset)
    if kind is ModelKind.TFLITE:
        raise ModelError(f"{source} is already a TFLite flatbuffer; convert from the Keras/SavedModel source")
    from toolchain.backends import tensorflow as tfb

    loaded = tfb.TFSource(source, kind)
    return loaded.to_onnx(opset) if target == "onnx" else tfb.convert_tflite(loaded.converter())


def onnx_to_opset(source: Path, opset: int) -> bytes:
    """An ONNX model re-expressed at ``opset`` (unchanged when it already is)."""
    import onnx
    from onnx import version_converter

    try:
        model = onnx.load(str(source))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
        raise ModelError(f"{source} is not a valid ONNX model: {str(exc).splitlines()[0][:300]}") from None
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current != opset:
        try:
            model = version_converter.convert_version(model, opset)
        except Exception as exc:  # the version converter raises RuntimeError with adapter names
            raise ModelError(f"cannot convert {source} from opset {current} to {opset}: {str(exc)[:300]}") from None
    data: bytes = model.SerializeToString()
    return data
