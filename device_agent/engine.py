"""The inference engine: one active model, hot-swapped without dropping or mixing requests.

A request takes a reference to the model that is active when it starts and finishes on that
model, even if a swap happens meanwhile; the old model stays alive until its last request ends.
Every request is recorded in the telemetry window and, during probation, the probation window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from device_agent.errors import InferenceError
from device_agent.model import LoadedModel
from device_agent.runtime.base import dequantize
from device_agent.stats import Window


@dataclass(frozen=True)
class Prediction:
    outputs: dict[str, np.ndarray]
    model: LoadedModel
    latency_ms: float
    classes: tuple[np.ndarray, np.ndarray] | None = None  # (top-1 index, confidence) per sample

    @property
    def top1(self) -> list[int] | None:
        return self.classes[0].tolist() if self.classes else None

    @property
    def confidence(self) -> list[float] | None:
        return [round(float(c), 6) for c in self.classes[1]] if self.classes else None

    def labels(self) -> list[str] | None:
        if self.top1 is None or not self.model.labels:
            return None
        return [self.model.labels[i] if i < len(self.model.labels) else str(i) for i in self.top1]


class CaptureSink(Protocol):
    """Decides cheaply whether to keep an inference (``device_agent.capture.sampler``): the engine counts
    ``due`` down and calls ``select`` when it runs out or the confidence is under ``floor``."""

    due: int
    floor: float

    def select(
        self,
        model: LoadedModel,
        feeds: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        classes: tuple[np.ndarray, np.ndarray] | None,
        conf: float | None,
    ) -> None: ...


DRIFT_BUDGET = 0.01  # drift histograms may cost at most this fraction of inference time (sampled)
DRIFT_WARMUP = 50  # ...except the first requests of each model, so a young model's PSI rests on enough data


class InferenceEngine:
    def __init__(self, model: LoadedModel) -> None:
        self._model = model
        self._swap_lock = threading.Lock()
        self._infer_s = 0.0  # total inference time, for the drift budget
        self._drift_s = 0.0  # total time spent on drift histograms
        self.window = self._new_window(model)  # one telemetry interval
        self.model_window = self._new_window(model, drift=True)  # since the current model became active
        self.capture: CaptureSink | None = None  # set only while a capture policy selects (``Sampler.bind``)

    @staticmethod
    def _new_window(model: LoadedModel, drift: bool = False) -> Window:
        """Drift histograms live only in the model window; telemetry windows need none."""
        return Window(drift_ref=model.drift_ref if drift else None, started=time.monotonic())

    @property
    def model(self) -> LoadedModel:
        return self._model

    def swap(self, model: LoadedModel) -> LoadedModel:
        """Make ``model`` active for new requests; returns the previous model."""
        with self._swap_lock:
            old, self._model = self._model, model
            self.model_window = self._new_window(model, drift=True)
            self.window = self._new_window(model)
        return old

    def roll_window(self) -> Window:
        """Start a new telemetry window and return the finished one."""
        with self._swap_lock:
            old, self.window = self.window, self._new_window(self._model)
        return old

    @staticmethod
    def _drift_tensors(
        model: LoadedModel, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Inputs and outputs in the float domain, keyed as in the bundle's drift reference."""
        ins = model.manifest.inputs
        given = dict(zip([s.name for s in ins], feeds.values(), strict=True)) if len(feeds) == 1 == len(ins) else feeds
        tensors = {f"input:{s.name}": dequantize(np.asarray(given[s.name]), s) for s in ins if s.name in given}
        return tensors | {f"output:{k}": v for k, v in outputs.items()}

    def predict(self, feeds: Mapping[str, np.ndarray], *, raw: bool = False) -> Prediction:
        """Raises: InferenceError (recorded as an error in the statistics). While a capture policy is live, the
        arrays of ``feeds`` and of the outputs are handed over: capture keeps a selected inference's arrays by
        reference (not copied: see ``Sampler.select``) until its worker has stored them, within a fraction of
        a second, so the caller must not write into them afterwards."""
        model = self._model
        window, model_window = self.window, self.model_window
        t0 = time.perf_counter()
        try:
            outputs = model.predict(feeds, raw=raw)
        except InferenceError:
            for w in (window, model_window):
                w.record(time.perf_counter() - t0, ok=False)
            raise
        latency = time.perf_counter() - t0
        floats = {s.name: dequantize(outputs[s.name], s) for s in model.manifest.outputs} if raw else outputs
        cls = model.classify(floats)
        conf: float | None = None  # the least top-1 confidence, for the capture's low-confidence rule
        if cls is None:
            window.record_latency(latency)
        elif len(cls[1]) == 1:  # one sample, the common case: Python scalars, for the window and the capture
            conf = cls[1].item()
            window.record_one(latency, cls[0].item(), conf)
        else:
            window.record(latency, top1=cls[0], conf=cls[1])
            conf = float(cls[1].min())
        model_window.record_latency(latency)  # probation gates need latency and errors only
        self._infer_s += latency
        # Drift accumulates since the model became active (a slow-moving statistic), sampled within budget.
        if model_window.tracks_drift and (
            model_window.drift_samples < DRIFT_WARMUP or self._drift_s <= DRIFT_BUDGET * self._infer_s
        ):
            t1 = time.perf_counter()
            model_window.record_tensors(self._drift_tensors(model, feeds, floats))
            self._drift_s += time.perf_counter() - t1
        cap = self.capture
        if cap is not None:  # capture's check, inline (a call per inference was ~1 % of a 12 µs model)
            n = cap.due = cap.due - 1
            if n <= 0 or (conf is not None and conf < cap.floor):
                cap.select(model, feeds, floats, cls, conf)
        return Prediction(outputs=outputs, model=model, latency_ms=latency * 1000.0, classes=cls)
