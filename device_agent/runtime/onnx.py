"""ONNX Runtime backend (CPU execution provider). The only device_agent module importing onnxruntime."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from typing import Any

import numpy as np

from device_agent.bundle.manifest import TensorInfo
from device_agent.errors import RuntimeLoadError, RuntimeRunError
from device_agent.runtime.base import Runtime, check_feed

_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeLoadError("ONNX Runtime is not installed: install onnxruntime") from None
    return onnxruntime


def installed_version() -> str:
    """From package metadata: importing onnxruntime only to read its version costs ~50 MB of RSS."""
    try:
        return importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeLoadError("ONNX Runtime is not installed: install onnxruntime") from None


def _spec(arg: Any) -> TensorInfo:
    if arg.type not in _DTYPES:
        raise RuntimeLoadError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorInfo(name=arg.name, dtype=_DTYPES[arg.type], shape=shape)


class OnnxRuntime(Runtime):
    name = "onnx"

    def __init__(self, model: str | bytes, threads: int) -> None:
        ort = _ort()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped exceptions (Fail, InvalidGraph, ...)
            source = "the model" if isinstance(model, bytes) else model
            raise RuntimeLoadError(f"ONNX Runtime cannot load {source}: {str(exc)[:300]}") from None
        self._version = str(ort.__version__)
        self._inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self._outputs = tuple(_spec(a) for a in self._session.get_outputs())

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for spec in self._inputs:
            if spec.name not in feeds:
                raise RuntimeRunError(f"missing input {spec.name!r}")
            check_feed(spec, np.asarray(feeds[spec.name]))
        try:
            results = self._session.run(None, {s.name: np.asarray(feeds[s.name]) for s in self._inputs})
        except Exception as exc:  # onnxruntime raises untyped errors (Fail, InvalidArgument, ...)
            raise RuntimeRunError(f"ONNX Runtime failed to run the model: {str(exc)[:300]}") from None
        return {spec.name: np.asarray(r) for spec, r in zip(self._outputs, results, strict=True)}


def load(model: str | bytes, threads: int) -> Runtime:
    return OnnxRuntime(model, threads)
