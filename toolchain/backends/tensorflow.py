"""The TensorFlow backend: the only toolchain module that imports tensorflow.

Keras models are traced through a ``tf.function`` with a named input signature so that both the
TFLite model (via its signature) and the ONNX model (via tf2onnx) expose the same tensor names.
Everything that needs TensorFlow (loading, the TFLite converter and its quantization debugger,
tf2onnx) is reached through this module; other modules receive ``tf`` from here.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep C++ start-up chatter off the user's terminal
import tensorflow as tf

from device_agent.bundle.manifest import TensorInfo
from toolchain.errors import InputError, ModelError, UnsupportedOpsError
from toolchain.sources import ModelKind

__all__ = ["tf"]

Dataset = Callable[[], Iterable[dict[str, Any]]]


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send file descriptor 1 to stderr while TFLite's C++ code prints its progress there.

    The converter and calibrator write lines like ``fully_quantize: 0, ...`` straight to fd 1,
    which would corrupt ``edgetool ... --json`` output. Python-level stdout is left alone.
    """
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real fd 1 (embedded interpreters): nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _specs(model: Any) -> list[Any]:
    return [tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=t.name.split(":")[0]) for t in model.inputs]


def serving_function(model: Any) -> Any:
    """A tf.function over ``model`` with input names from the Keras model and a dynamic batch,
    returning a dict keyed by output layer names."""
    out_names = [_output_name(t, i) for i, t in enumerate(model.outputs)]

    @tf.function(input_signature=_specs(model))
    def serve(*args: Any) -> dict[str, Any]:
        outputs = model(list(args) if len(args) > 1 else args[0])
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        return dict(zip(out_names, outputs, strict=True))

    return serve


def _output_name(tensor: Any, index: int) -> str:
    """The name of the layer producing ``tensor`` (Keras 3 tensor names are ``keras_tensor_N``)."""
    history = getattr(tensor, "_keras_history", None)
    op = getattr(history, "operation", None)
    return str(getattr(op, "name", None) or f"output_{index}")


def load_keras(path: Path) -> Any:
    """Load a .keras or .h5 model (no custom objects, no unsafe lambdas).

    Raises:
        ModelError: the file is not a loadable Keras model.
    """
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises ValueError, OSError, zipfile errors, ... for bad files
        raise ModelError(f"cannot load Keras model {path}: {str(exc).splitlines()[0][:300]}") from None


def _saved_model_function(path: Path) -> Any:
    """The ``serving_default`` signature of a SavedModel as a tf.function with positional named inputs."""
    try:
        loaded = tf.saved_model.load(str(path))
        concrete = loaded.signatures["serving_default"]
    except Exception as exc:  # tf raises OSError, KeyError, its own errors for bad SavedModels
        raise ModelError(f"cannot load SavedModel {path}: {str(exc).splitlines()[0][:300]}") from None
    specs = concrete.structured_input_signature[1]
    names = sorted(specs)

    @tf.function(input_signature=[tf.TensorSpec(specs[n].shape, specs[n].dtype, name=n) for n in names])
    def serve(*args: Any) -> Any:
        return concrete(**dict(zip(names, args, strict=True)))

    serve._edgefleet_keepalive = loaded
    return serve


class TFSource:
    """A loaded Keras file or SavedModel: its input specs and fresh TFLite converters on demand."""

    def __init__(self, path: Path, kind: ModelKind) -> None:
        self.path, self.kind = path, kind
        if kind is ModelKind.SAVEDMODEL:
            self._model = None
            self.function = _saved_model_function(path)
        elif kind is ModelKind.KERAS:
            self._model = load_keras(path)
            self.function = serving_function(self._model)
        else:
            raise ModelError(f"{path}: the TFLite converter needs a Keras or SavedModel source, not {kind}")
        self.inputs = tuple(
            TensorInfo(
                name=s.name, dtype=s.dtype.name, shape=tuple(-1 if d is None else int(d) for d in s.shape.as_list())
            )
            for s in self.function.input_signature
        )

    def converter(self) -> Any:
        """A fresh ``TFLiteConverter`` (float32, built-in ops only)."""
        if self._model is None:
            return tf.lite.TFLiteConverter.from_saved_model(str(self.path))
        return tf.lite.TFLiteConverter.from_concrete_functions([_frozen(self.function)], self._model)

    def to_onnx(self, opset: int) -> bytes:
        """ONNX bytes via tf2onnx.

        Raises:
            UnsupportedOpsError: ops tf2onnx cannot express at ``opset``.
            ModelError: any other conversion failure.
        """
        return _tf2onnx(self.function, opset)


_TF_OP = re.compile(r"\btf\.([A-Z][A-Za-z0-9_]*)")
_SELECT_LINE = re.compile(r"(?:TF Select ops|Flex ops|Unsupported ops)[^:]*:\s*([A-Za-z0-9_, ]+)")


def unsupported_ops(message: str) -> tuple[str, ...]:
    """TensorFlow op names a converter error says TFLite's built-in kernels lack."""
    ops = set(_TF_OP.findall(message))
    for line in _SELECT_LINE.findall(message):
        ops |= {o.strip() for o in line.split(",") if o.strip()}
    return tuple(sorted(ops))


def convert_tflite(converter: Any) -> bytes:
    """Run ``converter``; map its errors to one line, listing the unsupported ops when that is the cause.

    Raises:
        UnsupportedOpsError: ops that would need SELECT_TF_OPS (TF kernels, the Flex delegate).
        ModelError: any other conversion failure.
    """
    try:
        with quiet_stdout():
            data: bytes = converter.convert()
    except Exception as exc:  # the converter raises ConverterError and bare Exceptions
        text = str(exc)
        ops = unsupported_ops(text)
        if ops:
            raise UnsupportedOpsError(
                f"TFLite conversion failed: ops not in TFLite's built-in kernels: {', '.join(ops)} (they would need "
                "SELECT_TF_OPS, the Flex delegate, which device LiteRT builds do not ship; replace them, or use "
                "--to onnx)",
                ops,
            ) from None
        raise ModelError(f"TFLite conversion failed: {text.strip().splitlines()[-1][:400] if text else exc}") from None
    return data


def _frozen(fn: Any) -> Any:
    """``fn``'s concrete function with variables folded into constants, output names kept.

    The converter's calibrator cannot run resource-variable reads, and a converted model whose
    variables are not folded in loses its weights, so every conversion goes through this.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    concrete = fn.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    structure = concrete.structured_outputs
    if not isinstance(structure, dict):
        return frozen
    names = sorted(structure)  # flattening a dict orders it by key

    @tf.function(input_signature=fn.input_signature, autograph=False)
    def named(*args: Any) -> dict[str, Any]:
        return dict(zip(names, frozen(*args), strict=True))

    return named.get_concrete_function()


def keras_to_tflite(model: Any, out: Path) -> bytes:
    """Convert a Keras model to a float32 TFLite flatbuffer and write it to ``out``."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_frozen(serving_function(model))], model)
    data = convert_tflite(converter)
    out.write_bytes(data)
    return data


def _tf2onnx(fn: Any, opset: int) -> bytes:
    import tf2onnx

    try:
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=opset)
    except Exception as exc:  # tf2onnx raises plain Exceptions for unsupported ops
        text = str(exc)
        found = re.search(r"Unsupported ops: Counter\(\{(.*?)\}\)", text)
        if found:
            ops = tuple(sorted(re.findall(r"'([^']+)'", found.group(1))))
            raise UnsupportedOpsError(
                f"ONNX conversion failed: tf2onnx has no ONNX mapping (opset {opset}) for: {', '.join(ops)}", ops
            ) from None
        raise ModelError(f"ONNX conversion failed: {text.strip()[:400]}") from None
    _refuse_unknown_ops(proto, opset)
    _canonical_names(proto)
    data: bytes = proto.SerializeToString()
    return data


def _refuse_unknown_ops(proto: Any, opset: int) -> None:
    """tf2onnx logs ops it cannot map and leaves them in the graph as-is; refuse such a model.

    Raises:
        UnsupportedOpsError: listing the TensorFlow ops with no ONNX equivalent.
    """
    from onnx import defs

    unknown = sorted({n.op_type for n in proto.graph.node if n.domain in ("", "ai.onnx") and not defs.has(n.op_type)})
    if unknown:
        raise UnsupportedOpsError(
            f"ONNX conversion failed: tf2onnx has no ONNX mapping (opset {opset}) for: {', '.join(unknown)}",
            tuple(unknown),
        )


_GENERATED = re.compile(r"^.*__\d+$")


def _canonical_names(proto: Any) -> None:
    """Rename tf2onnx's generated names (``Transpose__24``, ``const_axes__7``) in graph order, in place.

    tf2onnx numbers what it creates with a process-wide counter and merges equal constants in
    set-iteration order (string hashing is randomised per process), so the same model converted
    twice would differ in these names alone. Renaming by first use (``Transpose__0``, ``const__1``)
    and sorting the initializers makes conversions byte-reproducible.
    """
    graph = proto.graph
    constants = {init.name for init in graph.initializer}
    renamed: dict[str, str] = {}

    def canon(name: str, stem: str) -> str:
        base, _, port = name.partition(":")
        if not _GENERATED.match(base):
            return name
        if base not in renamed:
            renamed[base] = f"{'const' if base in constants else stem}__{len(renamed)}"
        return renamed[base] + (f":{port}" if port else "")

    for node in graph.node:
        node.input[:] = [canon(n, "tensor") for n in node.input]
        node.name = canon(node.name, node.op_type)
        node.output[:] = [canon(n, node.op_type) for n in node.output]
    for info in (*graph.output, *graph.value_info):
        info.name = canon(info.name, "tensor")
    for init in graph.initializer:
        init.name = canon(init.name, "const")
    ordered = sorted(graph.initializer, key=lambda t: t.name)
    copies = [type(t)() for t in ordered]
    for copy, original in zip(copies, ordered, strict=True):
        copy.CopyFrom(original)
    del graph.initializer[:]
    graph.initializer.extend(copies)


def keras_to_onnx(model: Any, out: Path, opset: int = 17) -> bytes:
    """Convert a Keras model to ONNX with tf2onnx and write it to ``out``."""
    data = _tf2onnx(serving_function(model), opset)
    out.write_bytes(data)
    return data


def debugger(converter: Any, dataset: Dataset, denylisted_nodes: Sequence[str] = ()) -> Any:
    """A ``QuantizationDebugger`` over ``converter`` (already set up for int8), calibrated on ``dataset``.

    Raises:
        InputError: the debugger cannot calibrate or quantize the model.
    """
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=list(denylisted_nodes) or None, fully_quantize=False
    )
    try:
        with quiet_stdout():
            return tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=dataset, debug_options=options
            )
    except Exception as exc:  # the debugger re-raises converter and interpreter errors unchanged
        raise InputError(f"quantization debugger failed: {str(exc).strip()[:400]}") from None


def layer_statistics(dbg: Any) -> list[dict[str, str]]:
    """Run ``dbg`` and return its per-layer statistics (one dict per quantized tensor, as strings)."""
    with quiet_stdout():
        dbg.run()
    buf = io.StringIO()
    dbg.layer_statistics_dump(buf)
    return list(csv.DictReader(io.StringIO(buf.getvalue())))


def onnx2tf_model_to_tflite(model: Any, inputs: Sequence[str], outputs: Sequence[tuple[str, tuple[int, ...]]]) -> bytes:
    """onnx2tf's in-memory Keras model as a float TFLite model with built-in ops only: inputs named
    ``inputs`` (the ONNX names, in order), outputs renamed as ``outputs`` says and, where onnx2tf made
    a channels-first output channels-last, transposed back to the ONNX shape given.

    Raises:
        UnsupportedOpsError: ops that would need SELECT_TF_OPS.
        ModelError: the outputs cannot be mapped back to the ONNX shapes.
    """
    if len(model.inputs) != len(inputs) or len(model.outputs) != len(outputs):
        raise ModelError(
            f"onnx2tf's model has {len(model.inputs)} inputs and {len(model.outputs)} outputs, not as ONNX"
        )
    perms = [_layout_perm(tuple(t.shape), shape, name) for t, (name, shape) in zip(model.outputs, outputs, strict=True)]
    specs = [tf.TensorSpec(t.shape, t.dtype, name=n) for t, n in zip(model.inputs, inputs, strict=True)]

    @tf.function(input_signature=specs)
    def serve(*args: Any) -> dict[str, Any]:
        result = model(list(args))
        result = result if isinstance(result, list | tuple) else [result]
        return {
            name: value if perm is None else tf.transpose(value, perm)
            for value, (name, _), perm in zip(result, outputs, perms, strict=True)
        }

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
    return convert_tflite(converter)


def _layout_perm(got: tuple[int | None, ...], want: tuple[int, ...], name: str) -> list[int] | None:
    """The transpose taking onnx2tf's channels-last output ``got`` back to the ONNX shape ``want``.

    Raises:
        ModelError: neither the shape as it is nor channels-first matches.
    """
    if got == want:
        return None
    perm = [0, len(got) - 1, *range(1, len(got) - 1)]
    if len(got) >= 3 and tuple(got[i] for i in perm) == want:
        return perm
    raise ModelError(f"onnx2tf changed output {name!r} from {list(want)} to {list(got)}: no layout maps it back")
