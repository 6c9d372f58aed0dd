"""The runtime interface. Backends live in ``litert.py`` and ``onnx.py`` and are imported lazily."""

from __future__ import annotations

import contextlib
import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from device_agent.bundle.manifest import TensorInfo
from device_agent.errors import EdgefleetError

if TYPE_CHECKING:
    import numpy as np

_BACKENDS = {"tflite": "device_agent.runtime.litert", "onnx": "device_agent.runtime.onnx"}


class RuntimeLoadError(EdgefleetError):
    """The runtime is not installed, or it cannot load the model."""

    code = "runtime"


class Runtime(ABC):
    """A loaded model. ``run`` takes and returns arrays keyed by tensor name."""

    name: ClassVar[str]

    @property
    @abstractmethod
    def version(self) -> str: ...

    @property
    @abstractmethod
    def inputs(self) -> tuple[TensorInfo, ...]: ...

    @property
    @abstractmethod
    def outputs(self) -> tuple[TensorInfo, ...]: ...

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference.

        Raises:
            RuntimeLoadError: a feed is missing or has the wrong shape or dtype.
        """


def load_runtime(kind: str, model: str | os.PathLike[str] | bytes, threads: int = 1) -> Runtime:
    """Load ``model`` (a path, or the model's bytes) with the backend for ``kind`` (``tflite`` or ``onnx``).

    Raises:
        RuntimeLoadError: unknown kind, backend not installed, or a model the backend refuses.
    """
    if kind not in _BACKENDS:
        raise RuntimeLoadError(f"unknown runtime {kind!r}; expected one of {', '.join(_BACKENDS)}")
    module = importlib.import_module(_BACKENDS[kind])
    runtime: Runtime = module.load(model if isinstance(model, bytes) else os.fspath(model), threads)
    return runtime


def available_runtimes() -> dict[str, str]:
    """Installed runtimes and their versions, e.g. ``{"tflite": "2.3.0", "onnx": "1.31.1"}``."""
    found: dict[str, str] = {}
    for kind, mod in _BACKENDS.items():
        with contextlib.suppress(RuntimeLoadError):
            found[kind] = importlib.import_module(mod).installed_version()
    return found


def check_feed(spec: TensorInfo, array: np.ndarray) -> None:
    """Raises: RuntimeLoadError if ``array`` cannot feed ``spec`` (rank, fixed dims, dtype)."""
    if array.dtype.name != spec.dtype:
        raise RuntimeLoadError(f"input {spec.name!r} expects {spec.dtype}, got {array.dtype.name}")
    if len(array.shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
    ):
        raise RuntimeLoadError(f"input {spec.name!r} expects shape {list(spec.shape)}, got {list(array.shape)}")


def quantize(array: np.ndarray, spec: TensorInfo) -> np.ndarray:
    """Float data → the integer dtype of a quantized input (per-tensor scale/zero-point), rounded and clipped."""
    import numpy as np

    q = spec.quantization
    dtype = np.dtype(spec.dtype)
    if q is None or array.dtype.kind != "f" or dtype.kind not in "iu":
        return array
    info = np.iinfo(dtype)
    scaled = np.round(array / q.scale[0] + q.zero_point[0])
    return np.clip(scaled, info.min, info.max).astype(dtype)


def dequantize(array: np.ndarray, spec: TensorInfo) -> np.ndarray:
    """A quantized output → float32 with the tensor's scale/zero-point (other tensors pass through)."""
    import numpy as np

    q = spec.quantization
    if q is None or array.dtype.kind not in "iu":
        return array
    return ((array.astype(np.float32) - q.zero_point[0]) * q.scale[0]).astype(np.float32)
