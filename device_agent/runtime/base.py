"""The runtime interface. Backends live in ``litert.py`` and ``onnx.py`` and are imported lazily."""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from device_agent.bundle.manifest import TensorInfo
from device_agent.errors import RuntimeLoadError, RuntimeRunError

if TYPE_CHECKING:
    import numpy as np

_BACKENDS = {"tflite": "device_agent.runtime.litert", "onnx": "device_agent.runtime.onnx"}


class Runtime(ABC):
    """A loaded model. ``run`` takes and returns arrays keyed by tensor name.

    Backends set ``_version``, ``_inputs`` and ``_outputs`` when they load the model.
    """

    name: ClassVar[str]
    _version: str
    _inputs: tuple[TensorInfo, ...]
    _outputs: tuple[TensorInfo, ...]

    @property
    def version(self) -> str:
        return self._version

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self._outputs

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference.

        Raises:
            RuntimeRunError: a feed is missing or has the wrong shape or dtype, or the runtime failed.
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


@functools.cache
def _dtype(name: str) -> np.dtype[Any]:
    import numpy as np

    return np.dtype(name)


def check_feed(spec: TensorInfo, array: np.ndarray) -> None:
    """Raises: RuntimeRunError if ``array`` cannot feed ``spec`` (rank, fixed dims, dtype)."""
    if array.dtype != _dtype(spec.dtype):
        raise RuntimeRunError(f"input {spec.name!r} expects {spec.dtype}, got {array.dtype.name}")
    shape = array.shape
    if shape == spec.shape:
        return  # the common case: a fully static input, exactly matched
    if len(shape) != len(spec.shape) or any(w not in (-1, g) for w, g in zip(spec.shape, shape, strict=True)):
        raise RuntimeRunError(f"input {spec.name!r} expects shape {list(spec.shape)}, got {list(shape)}")


def quantize(array: np.ndarray, spec: TensorInfo) -> np.ndarray:
    """Float data → the integer dtype of a quantized input (per-tensor scale/zero-point), rounded and clipped."""
    import numpy as np

    q = spec.quantization
    if q is None or array.dtype.kind != "f":
        return array
    dtype = _dtype(spec.dtype)
    if dtype.kind not in "iu":
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
