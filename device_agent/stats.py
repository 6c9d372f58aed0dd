"""Inference statistics: latency percentiles, errors, prediction stats and drift (PSI).

A ``Window`` accumulates one period (a telemetry interval, or a probation) with bounded memory:
latencies go to a fixed-size reservoir, histograms are fixed-size count arrays.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RESERVOIR = 2048  # latency samples kept per window
PSI_EPS = 1e-4  # floor for empty bins in PSI


def psi(expected: list[float], counts: np.ndarray) -> float:
    """Population stability index of observed ``counts`` against ``expected`` fractions."""
    total = float(counts.sum())
    if total <= 0:
        return 0.0
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_EPS)
    a = np.maximum(counts / total, PSI_EPS)
    return float(((a - e) * np.log(a / e)).sum())


@dataclass
class _Histogram:
    edges: np.ndarray
    expected: list[float]
    counts: np.ndarray

    @classmethod
    def of(cls, ref: Mapping[str, Any]) -> _Histogram:
        edges = np.asarray(ref["edges"], dtype=np.float64)
        return cls(edges, list(ref["fractions"]), np.zeros(len(edges) + 1, dtype=np.int64))

    def add(self, values: np.ndarray) -> None:
        idx = np.searchsorted(self.edges, np.asarray(values, dtype=np.float64).ravel(), side="right")
        self.counts += np.bincount(idx, minlength=len(self.counts))


@dataclass
class Snapshot:
    inferences: int
    errors: int
    seconds: float
    lat_ms: dict[str, float]
    conf_mean: float | None
    classes: dict[int, int]
    psi: dict[str, float]

    @property
    def error_rate(self) -> float:
        return self.errors / self.inferences if self.inferences else 0.0

    @property
    def psi_max(self) -> float | None:
        return max(self.psi.values()) if self.psi else None


@dataclass
class Window:
    """Statistics of one period. Thread-safe; ``record`` is cheap enough for every inference."""

    drift_ref: Mapping[str, Any] | None = None
    started: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def __post_init__(self) -> None:
        self.inferences = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.conf_sum = 0.0
        self.conf_n = 0
        self.classes: dict[int, int] = {}
        self.hists: dict[str, _Histogram] = {}
        self.drift_samples = 0  # record_tensors calls
        if self.drift_ref:
            for kind in ("inputs", "outputs"):
                for name, ref in self.drift_ref.get(kind, {}).items():
                    self.hists[f"{kind[:-1]}:{name}"] = _Histogram.of(ref)
        self.tracks_drift = bool(self.hists)

    def record(
        self, latency_s: float, *, ok: bool = True, top1: np.ndarray | None = None, conf: np.ndarray | None = None
    ) -> None:
        with self._lock:
            self.inferences += 1
            self.errors += 0 if ok else 1
            self._keep(latency_s)
            if conf is not None and top1 is not None:
                self.conf_sum += float(conf.sum())
                self.conf_n += len(conf)
                for c in top1.tolist():
                    self.classes[c] = self.classes.get(c, 0) + 1

    def record_one(self, latency_s: float, top1: int, conf: float) -> None:
        """``record`` of one successful sample's prediction, given as Python scalars (the engine's common case:
        a numpy reduction per inference cost more than the rest of this)."""
        with self._lock:
            self.inferences += 1
            self._keep(latency_s)
            self.conf_sum += conf
            self.conf_n += 1
            self.classes[top1] = self.classes.get(top1, 0) + 1

    def record_latency(self, latency_s: float) -> None:
        """``record`` of a successful request without prediction stats: the hot path's common case."""
        with self._lock:
            self.inferences += 1
            self._keep(latency_s)

    def _keep(self, latency_s: float) -> None:
        """Reservoir sampling (under the lock; ``inferences`` counts this one): an unbiased sample of the
        whole window. ``random() * n``, not ``randrange(n)``: one C call instead of three Python ones, per
        inference (its bias, at most n / 2**53, is nothing here)."""
        if len(self.latencies) < RESERVOIR:
            self.latencies.append(latency_s)
        else:
            j = int(self._rng.random() * self.inferences)
            if j < RESERVOIR:
                self.latencies[j] = latency_s

    def record_tensors(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Add input/output values (keys ``input:NAME`` / ``output:NAME``) to the drift histograms."""
        with self._lock:
            self.drift_samples += 1
            for key, values in tensors.items():
                hist = self.hists.get(key)
                if hist is not None:
                    hist.add(values)

    def snapshot(self, now: float) -> Snapshot:
        with self._lock:
            lat = np.asarray(self.latencies, dtype=np.float64) * 1000.0
            pct = {}
            if len(lat):
                p50, p95, p99 = np.percentile(lat, [50, 95, 99])
                pct = {"p50": float(p50), "p95": float(p95), "p99": float(p99)}
            psis = {k: psi(h.expected, h.counts) for k, h in self.hists.items() if h.counts.sum() > 0}
            return Snapshot(
                inferences=self.inferences,
                errors=self.errors,
                seconds=max(now - self.started, 1e-9),
                lat_ms=pct,
                conf_mean=self.conf_sum / self.conf_n if self.conf_n else None,
                classes=dict(self.classes),
                psi={k: v for k, v in psis.items() if math.isfinite(v)},
            )
