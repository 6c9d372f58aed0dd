"""``edgetool convert``: a Keras, SavedModel, ONNX, TFLite or PyTorch (.pt2) model to a float32 TFLite or ONNX model.

Each route goes through a maintained converter: the TFLite converter and tf2onnx for TensorFlow
sources, onnx2tf for ONNX → TFLite (``toolchain.backends.onnx2tf``), torch.onnx for PyTorch
(``toolchain.backends.torch``), and for a .tflite the flatbuffer normalisation the AI Edge quantizer
needs (``toolchain.tflite_intake``). A TFLite made from ONNX is run against onnxruntime on one
sample before it is written: its outputs must match within ``ONNX_TFLITE_TOLERANCE``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device_agent.fsutil import atomic_write
from toolchain.errors import ModelError
from toolchain.sources import ModelKind, model_kind
from toolchain.validate import check_model

TARGETS = ("tflite", "onnx")
DEFAULT_OPSET = 17
# A TFLite converted from ONNX must match onnxruntime within this, times max(1, the largest |output|).
ONNX_TFLITE_TOLERANCE = 1e-4
Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class ConvertResult:
    source: Path
    source_kind: ModelKind
    output: Path
    target: str
    bytes: int
    tools: dict[str, str] = field(default_factory=dict)  # converter → version (for provenance)
    max_abs_error: float | None = None  # ONNX → TFLite: against onnxruntime on one sample


def convert(
    source: Path, target: str, output: Path, opset: int | None = None, input_shapes: Shapes | None = None
) -> ConvertResult:
    """Convert ``source`` to ``target`` (``tflite`` or ``onnx``) and write ``output`` atomically.

    ``opset``: the ONNX opset (default ``DEFAULT_OPSET``; for a .pt2 the exporter's own, 18).
    ``input_shapes`` fixes dynamic input dimensions where the target needs fixed ones (ONNX → TFLite).

    Raises:
        ModelError: unknown or corrupt source, or a conversion this tool cannot do (TFLite → ONNX).
        UnsupportedOpsError: the model uses ops the target lacks (the message lists them).
    """
    kind = model_kind(source)
    if target not in TARGETS:
        raise ModelError(f"unknown target {target!r}; use tflite or onnx")
    tools: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="edgetool-c-") as tmp:
        data, error = _convert_bytes(source, kind, target, (opset, input_shapes or {}), (Path(tmp), tools))
        produced = Path(tmp) / f"converted.{target}"
        produced.write_bytes(data)
        check_model(target, produced, None, source if kind.value == target else None)
    atomic_write(output, data)
    return ConvertResult(source, kind, output, target, len(data), tools, error)


def _convert_bytes(
    source: Path, kind: ModelKind, target: str, settings: tuple[int | None, Shapes], work: tuple[Path, dict[str, str]]
) -> tuple[bytes, float | None]:
    """The converted model and, for ONNX → TFLite, its max abs error against onnxruntime."""
    opset, shapes = settings
    tmp, tools = work
    if kind is ModelKind.TFLITE:
        if target == "onnx":
            raise ModelError(f"{source}: TFLite → ONNX is not supported; convert from the original model")
        from toolchain.tflite_intake import normalise

        return normalise(source.read_bytes(), str(source)).data, None
    if kind is ModelKind.PT2:
        from toolchain.backends import torch as torch_backend

        onnx_file = tmp / "from_torch.onnx"
        onnx_file.write_bytes(torch_backend.to_onnx(source, opset or torch_backend.NATIVE_OPSET))
        tools.update(torch_backend.versions())
        if target == "onnx":
            lower = opset is not None and opset < torch_backend.NATIVE_OPSET
            return (onnx_to_opset(onnx_file, opset) if lower else onnx_file.read_bytes()), None  # type: ignore[arg-type]
        if not shapes:  # dynamic dims (torch.export.Dim) take the example inputs' sizes
            shapes = _example_shapes(onnx_file, torch_backend.example_shapes(source))
        source, kind = onnx_file, ModelKind.ONNX
    if kind is ModelKind.ONNX:
        if target == "onnx":
            return onnx_to_opset(source, opset or DEFAULT_OPSET), None
        from toolchain.backends import onnx2tf

        tools["onnx2tf"] = onnx2tf.version()
        data = onnx2tf.to_tflite(source, shapes)
        return data, onnx_tflite_error(source, data)
    from toolchain.backends import tensorflow as tfb

    loaded = tfb.TFSource(source, kind)
    if target == "onnx":
        return _without_trace_name(loaded.to_onnx(opset or DEFAULT_OPSET)), None
    return tfb.convert_tflite(loaded.converter()), None


def _without_trace_name(data: bytes) -> bytes:
    """tf2onnx's model with its process-wide counters taken out: the graph doc string names the traced function
    (``__inference_serve_77``) and unknown dims are ``unk__N``; both counters grow with every conversion in a
    process, so the same source would give other bytes. Unknown dims are renumbered by first appearance."""
    import onnx

    model = onnx.load_from_string(data)
    model.graph.doc_string = ""
    names: dict[str, str] = {}
    for info in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param.startswith("unk__"):
                dim.dim_param = names.setdefault(dim.dim_param, f"unk__{len(names)}")
    out: bytes = model.SerializeToString()
    return out


def _example_shapes(onnx_file: Path, shapes: list[tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    import onnx

    graph = onnx.load(str(onnx_file)).graph
    constants = {init.name for init in graph.initializer}
    out = {}
    for graph_input, example in zip((i for i in graph.input if i.name not in constants), shapes, strict=False):
        dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
        if len(dims) == len(example):  # a dynamic batch becomes 1, other dynamic dims the example's size
            out[graph_input.name] = tuple(
                d if d > 0 else (1 if i == 0 else e) for i, (d, e) in enumerate(zip(dims, example, strict=True))
            )
    return out


def onnx_tflite_error(onnx_model: Path, tflite: bytes) -> float:
    """Max abs difference between the TFLite model and onnxruntime on one deterministic sample.

    Raises:
        ModelError: the difference exceeds ``ONNX_TFLITE_TOLERANCE`` (scaled by the outputs' magnitude).
    """
    from device_agent.runtime import load_runtime
    from toolchain.validate import synthetic_feeds

    lite = load_runtime("tflite", tflite)
    feeds = synthetic_feeds(lite.inputs)
    want = load_runtime("onnx", onnx_model).run(feeds)
    got = lite.run(feeds)
    worst, scale = 0.0, 1.0
    for name, ref in want.items():
        value = got.get(name)
        if value is None or value.shape != ref.shape:
            shape = None if value is None else list(value.shape)
            raise ModelError(f"the TFLite model's output {name!r} is {shape}, onnxruntime's is {list(ref.shape)}")
        ref64 = np.asarray(ref, np.float64)
        worst = max(worst, float(np.max(np.abs(np.asarray(value, np.float64) - ref64), initial=0.0)))
        scale = max(scale, float(np.max(np.abs(ref64), initial=0.0)))
    if worst > ONNX_TFLITE_TOLERANCE * scale:
        raise ModelError(
            f"the TFLite model from onnx2tf differs from onnxruntime by {worst:.3g} (tolerance "
            f"{ONNX_TFLITE_TOLERANCE * scale:.3g}); it is not written"
        )
    return worst


def parse_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """``--input-shape NAME=D,D,...`` values as a mapping.

    Raises:
        ModelError: a value that is not NAME=positive integers.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, _, dims = item.partition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not name or not shape or min(shape) < 1:
            raise ModelError(f"--input-shape {item!r}: use NAME=D,D,... with positive sizes, e.g. x=1,3,96,160")
        shapes[name] = shape
    return shapes


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
