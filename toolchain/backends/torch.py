"""PyTorch → ONNX through ``torch.onnx.export`` (the dynamo exporter, onnxscript): the only module importing torch.

The input is an ``ExportedProgram`` saved with ``torch.export.save`` (a ``.pt2`` file): it carries the
graph, the weights and example inputs, so no Python class of the engineer's is needed to load it.
The ONNX model is checked against the program itself on those example inputs before it is used
(``TORCH_ONNX_TOLERANCE``). Needs the optional extra ``edgefleet[torch]``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import ModelError, UnsupportedOpsError

TORCH_ONNX_TOLERANCE = 1e-5  # times max(1, the largest |output|)
# The exporter writes opset 18 natively; asking it for less runs onnx's version converter, which fails
# on some reductions (ReduceL2's axes) and leaves a model onnxruntime refuses. Lower opsets are refused.
NATIVE_OPSET = 18
_ATEN = re.compile(r"\b(aten[.:]{1,2}[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)")


def versions() -> dict[str, str]:
    """torch, onnxscript and onnx versions (for provenance)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torch", "onnxscript", "onnx"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ModelError("a .pt2 model needs PyTorch: pip install 'edgefleet[torch]'") from None
    return torch


def load(source: Path) -> Any:
    """The ``ExportedProgram`` in ``source``.

    Raises:
        ModelError: not a file ``torch.export.save`` wrote.
    """
    torch = _torch()
    try:
        with _quiet():  # torch logs the failure (with its own advice) before raising it
            return torch.export.load(str(source))
    except Exception as exc:  # torch raises RuntimeError, zipfile errors, pickle errors for bad files
        raise ModelError(f"{source} is not a torch.export.save file: {_first_line(exc)}") from None


def example_shapes(source: Path) -> list[tuple[int, ...]]:
    """The shapes of the program's example inputs, in order (the sizes to give dynamic dims for TFLite)."""
    torch = _torch()
    args, kwargs = load(source).example_inputs or ((), {})
    return [tuple(t.shape) for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]


def example_run(source: Path, names: list[str]) -> list[tuple[dict[str, np.ndarray], list[tuple[str, np.ndarray]]]]:
    """The program's example inputs (keyed by ``names``, in order) and its outputs on them, as numpy."""
    torch = _torch()
    program = load(source)
    args, kwargs = program.example_inputs or ((), {})
    with torch.no_grad():
        want = program.module()(*args, **kwargs)
    outputs = [want] if isinstance(want, torch.Tensor) else list(want)
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    feeds = {name: t.detach().numpy() for name, t in zip(names, tensors, strict=False)}
    return [(feeds, [(str(i), o.detach().numpy()) for i, o in enumerate(outputs)])]


def to_onnx(source: Path, opset: int) -> bytes:
    """ONNX bytes for the ExportedProgram in ``source``, checked against it on its example inputs.

    Raises:
        UnsupportedOpsError: the exporter has no ONNX translation for some ATen ops (named).
        ModelError: any other export failure, or outputs differing from PyTorch's.
    """
    torch = _torch()
    program = load(source)
    args, kwargs = program.example_inputs or ((), {})
    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="edgetool-t-") as tmp, _quiet():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(
                program,
                args,
                kwargs=kwargs,
                dynamo=True,
                opset_version=max(opset, NATIVE_OPSET),
                verbose=False,
                report=False,
            )
            path = Path(tmp) / "model.onnx"
            onnx_program.save(str(path))
            data = path.read_bytes()
    except Exception as exc:  # the exporter raises its own error classes; the op names are in the text
        ops = tuple(sorted(set(_ATEN.findall(str(exc)))))
        if ops:
            raise UnsupportedOpsError(f"PyTorch → ONNX: no ONNX translation for {', '.join(ops)}", ops) from None
        raise ModelError(f"PyTorch → ONNX export failed: {_first_line(exc)}") from None
    _check(program, args, kwargs, data)
    return data


def _check(program: Any, args: tuple[Any, ...], kwargs: dict[str, Any], data: bytes) -> None:
    """Raise ModelError when onnxruntime's outputs differ from the program's beyond the tolerance."""
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        want = program.module()(*args, **kwargs)
    want_list = [want] if isinstance(want, torch.Tensor) else list(want)
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        feeds = {i.name: t.detach().numpy() for i, t in zip(session.get_inputs(), tensors, strict=False)}
        got = session.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own error classes for invalid graphs
        raise ModelError(f"onnxruntime cannot run the ONNX export: {_first_line(exc)}") from None
    for index, (g, w) in enumerate(zip(got, want_list, strict=False)):
        ref = w.detach().numpy().astype(np.float64)
        err = float(np.max(np.abs(np.asarray(g, np.float64) - ref), initial=0.0))
        scale = max(1.0, float(np.max(np.abs(ref), initial=0.0)))
        if err > TORCH_ONNX_TOLERANCE * scale:
            raise ModelError(f"the ONNX export differs from PyTorch on output {index} by {err:.3g}; not used")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints progress and logs recovered errors (with tracebacks) on stdout/stderr."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
