"""LiteRT backend: ``ai_edge_litert`` (current), else ``tflite_runtime`` (legacy images).

The only device_agent module that imports a TFLite interpreter.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Mapping
from typing import Any

import numpy as np

from device_agent.bundle.manifest import Quantization, TensorInfo
from device_agent.errors import RuntimeLoadError, RuntimeRunError
from device_agent.runtime.base import Runtime, check_feed


def _interpreter_module() -> tuple[Any, str]:
    """ai-edge-litert, else tflite-runtime, else TensorFlow's own tf.lite (a host fallback only:
    the agent extras never install tensorflow, so a device never gets here)."""
    try:
        import ai_edge_litert
        from ai_edge_litert import interpreter

        return interpreter, getattr(ai_edge_litert, "__version__", "0.0.0")
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime import interpreter

        return interpreter, getattr(tflite_runtime, "__version__", "0.0.0")
    except ImportError:
        pass
    try:
        tf = importlib.import_module("tensorflow")
    except ImportError:
        raise RuntimeLoadError("no TFLite runtime: install ai-edge-litert (or tflite-runtime)") from None
    return tf.lite, str(tf.__version__)


def installed_version() -> str:
    """From package metadata when possible, so asking does not load the interpreter."""
    for dist in ("ai-edge-litert", "tflite-runtime"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return _interpreter_module()[1]


def _signature_names(interpreter: Any) -> dict[int, str]:
    """Tensor index → signature name (``image`` rather than ``serving_default_image:0``), when the
    model has exactly one signature; the converter's tensor names are an implementation detail."""
    full: dict[str, Any] = getattr(interpreter, "_get_full_signature_list", dict)()
    if len(full) != 1:
        return {}
    sig = next(iter(full.values()))
    names = {int(i): n for n, i in {**sig.get("inputs", {}), **sig.get("outputs", {})}.items()}
    return names if len(set(names.values())) == len(names) else {}


def _spec(detail: dict[str, Any], names: dict[int, str]) -> TensorInfo:
    shape = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))
    q = detail.get("quantization_parameters") or {}
    scales = [float(s) for s in q.get("scales", [])]
    quant = None
    if scales:
        zps = [int(z) for z in q.get("zero_points", [])] or [0] * len(scales)
        quant = Quantization(tuple(scales), tuple(zps), int(q.get("quantized_dimension", 0)))
    name = names.get(int(detail["index"]), detail["name"])
    return TensorInfo(name=name, dtype=np.dtype(detail["dtype"]).name, shape=shape, quantization=quant)


class LiteRTRuntime(Runtime):
    name = "tflite"

    def __init__(self, model: str | bytes, threads: int) -> None:
        module, self._version = _interpreter_module()
        source = "the model" if isinstance(model, bytes) else model
        try:
            if isinstance(model, bytes):
                self._it = module.Interpreter(model_content=model, num_threads=threads)
            else:
                self._it = module.Interpreter(model_path=model, num_threads=threads)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RuntimeLoadError(f"LiteRT cannot load {source}: {exc}") from None
        self._in = self._it.get_input_details()
        self._out = self._it.get_output_details()
        self._shapes: list[tuple[int, ...]] = [tuple(int(x) for x in d["shape"]) for d in self._in]
        names = _signature_names(self._it)
        self._inputs = tuple(_spec(d, names) for d in self._in)
        self._outputs = tuple(_spec(d, names) for d in self._out)
        self._out_index = tuple((spec.name, int(d["index"])) for spec, d in zip(self._outputs, self._out, strict=True))
        # The common case gets a path with no per-call checks beyond name, dtype, shape and layout:
        # one input, fed at the shape the interpreter is allocated for (always a valid shape: the
        # model's own, or one an earlier call was checked against and resized to).
        self._single: tuple[str, np.dtype[Any], int] | None = (
            (self._inputs[0].name, np.dtype(self._inputs[0].dtype), int(self._in[0]["index"]))
            if len(self._inputs) == 1
            else None
        )

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        single = self._single
        if single is not None:
            array = feeds.get(single[0])
            if (
                array is not None
                and array.dtype == single[1]
                and array.shape == self._shapes[0]
                and array.flags.c_contiguous
            ):
                it = self._it
                try:
                    it.set_tensor(single[2], array)
                    it.invoke()
                except (RuntimeError, ValueError) as exc:
                    raise RuntimeRunError(f"LiteRT failed to run the model: {str(exc)[:300]}") from None
                return {name: it.get_tensor(index) for name, index in self._out_index}
        return self._run_checked(feeds)

    def _run_checked(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Any inputs: checks every feed, resizes dynamic inputs to the shapes given."""
        arrays = []
        for spec in self._inputs:
            if spec.name not in feeds:
                raise RuntimeRunError(f"missing input {spec.name!r}")
            array = np.ascontiguousarray(feeds[spec.name])
            check_feed(spec, array)
            arrays.append(array)
        resized = False
        for k, (array, detail) in enumerate(zip(arrays, self._in, strict=True)):
            if array.shape != self._shapes[k]:  # plain tuples: cheap to compare on every call
                self._it.resize_tensor_input(detail["index"], array.shape)
                self._shapes[k] = array.shape
                resized = True
        if resized:
            self._it.allocate_tensors()
        try:
            for array, detail in zip(arrays, self._in, strict=True):
                self._it.set_tensor(detail["index"], array)
            self._it.invoke()
        except (RuntimeError, ValueError) as exc:  # the interpreter's own failures (bad op, bad tensor)
            raise RuntimeRunError(f"LiteRT failed to run the model: {str(exc)[:300]}") from None
        # get_tensor already returns a copy, so callers may keep it across invocations
        return {name: self._it.get_tensor(index) for name, index in self._out_index}


def load(model: str | bytes, threads: int) -> Runtime:
    return LiteRTRuntime(model, threads)
