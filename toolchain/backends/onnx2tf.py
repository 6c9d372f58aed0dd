"""ONNX → TFLite through onnx2tf (PINTO0309's maintained converter): the only module importing onnx2tf.

onnx2tf rewrites the ONNX graph as a TensorFlow Keras model (channels-last inside), kept in memory;
the TensorFlow backend turns it into a TFLite model with built-in ops only (onnx2tf's own .tflite
allows SELECT_TF_OPS, which device LiteRT builds do not ship), names the outputs as in ONNX and
transposes channels-last outputs back to the ONNX layout. Inputs keep their ONNX layout.

onnx2tf needs fixed input shapes: dynamic dimensions are set from ``shapes`` (``--input-shape``,
or the first calibration sample), a dynamic leading batch dimension defaults to 1. It overwrites
the ONNX file it is given, so it always works on a copy in a temporary directory.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from toolchain.errors import ModelError, UnsupportedOpsError


def version() -> str:
    """The installed onnx2tf version (for provenance)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("onnx2tf")
    except PackageNotFoundError:
        return "unknown"


def to_tflite(source: Path, shapes: Mapping[str, Sequence[int]] | None = None) -> bytes:
    """Float32 TFLite bytes for the ONNX model at ``source``.

    Raises:
        ModelError: a dynamic dimension without a size, or onnx2tf failing (its reason in one line).
        UnsupportedOpsError: ops with no TFLite built-in kernel.
    """
    import onnx

    model = onnx.load(str(source))
    _refuse_unknown_ops(model)
    fixed = fix_shapes(model, dict(shapes or {}))
    model = onnx.shape_inference.infer_shapes(model)
    outputs = [(o.name, _dims(o)) for o in model.graph.output]
    with tempfile.TemporaryDirectory(prefix="edgetool-o2t-") as tmp:
        work = Path(tmp) / "model.onnx"
        onnx.save(model, str(work))
        keras_model = _run_onnx2tf(work, Path(tmp) / "out", [name for name, shape in fixed.items() if len(shape) >= 3])
        from toolchain.backends import tensorflow as tfb

        return tfb.onnx2tf_model_to_tflite(keras_model, list(fixed), outputs)


def fix_shapes(model: Any, shapes: dict[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Set every graph input's dynamic dimensions in place; returns input name → fixed shape.

    Raises:
        ModelError: a dynamic dimension other than the leading one that ``shapes`` does not give,
            or a given shape of the wrong rank or contradicting a fixed dimension.
    """
    constants = {init.name for init in model.graph.initializer}
    fixed: dict[str, tuple[int, ...]] = {}
    for graph_input in model.graph.input:
        if graph_input.name in constants:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        declared = [d.dim_value if d.dim_value > 0 else -1 for d in dims]
        given = shapes.pop(graph_input.name, None)
        shape = _shape_for(graph_input.name, declared, given)
        for dim, size in zip(dims, shape, strict=True):
            dim.ClearField("dim_param")
            dim.dim_value = size
        fixed[graph_input.name] = shape
    if shapes:
        raise ModelError(f"--input-shape names {sorted(shapes)}, which are not inputs of the model ({list(fixed)})")
    return fixed


def _shape_for(name: str, declared: list[int], given: Sequence[int] | None) -> tuple[int, ...]:
    if given is not None:
        if len(given) != len(declared) or any(d > 0 and d != g for d, g in zip(declared, given, strict=True)):
            raise ModelError(f"--input-shape {name}={','.join(map(str, given))} does not fit its shape {declared}")
        return tuple(int(g) for g in given)
    shape = [1 if i == 0 and d <= 0 else d for i, d in enumerate(declared)]
    if any(d <= 0 for d in shape):
        sizes = ",".join(str(d) if d > 0 else "N" for d in shape)
        raise ModelError(
            f"input {name!r} has dynamic dimensions {declared}; TFLite needs fixed ones: give --input-shape "
            f"{name}={sizes} with numbers for N (or calibration data of that shape)"
        )
    return tuple(shape)


def _refuse_unknown_ops(model: Any) -> None:
    """onnx2tf has one handler module per ONNX op (``onnx2tf.ops.<OpType>``); name the ops it lacks.

    Raises:
        UnsupportedOpsError: listing them.
    """
    import importlib.util

    types = {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}
    missing = tuple(sorted(t for t in types if importlib.util.find_spec(f"onnx2tf.ops.{t}") is None))
    custom = tuple(sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")}))
    if missing or custom:
        ops = missing + custom
        raise UnsupportedOpsError(f"ONNX → TFLite: onnx2tf cannot convert these ops: {', '.join(ops)}", ops)


def _dims(value_info: Any) -> tuple[int, ...]:
    return tuple(int(d.dim_value) for d in value_info.type.tensor_type.shape.dim)


def _run_onnx2tf(onnx_file: Path, out: Path, channels_first: list[str]) -> Any:
    """onnx2tf's Keras model for ``onnx_file`` (kept in memory: its SavedModel and .tflite files are not needed)."""
    import onnx2tf
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # onnx2tf's own shape probes warn in C++ on stderr
    try:
        with _silenced():
            model = onnx2tf.convert(
                input_onnx_file_path=str(onnx_file),
                output_folder_path=str(out),
                keep_ncw_or_nchw_or_ncdhw_input_names=channels_first or None,
                disable_model_save=True,
                not_use_onnxsim=True,
                non_verbose=True,
            )
    except SystemExit:  # onnx2tf reports some failures with sys.exit(1) after logging them
        raise ModelError(f"onnx2tf could not convert {onnx_file.name}") from None
    except Exception as exc:  # onnx2tf raises whatever its op handlers raise
        text = str(exc).strip().splitlines()
        raise ModelError(f"onnx2tf could not convert the model: {text[0][:300] if text else type(exc)}") from None
    if model is None:
        raise ModelError("onnx2tf returned no model (the model may use ops it does not support)")
    return model


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """onnx2tf prints progress (and TensorFlow its notices) on stdout: keep them off ``--json`` output."""
    from toolchain.backends.tensorflow import quiet_stdout

    with quiet_stdout(), contextlib.redirect_stdout(io.StringIO()):
        yield
