"""How close a candidate's outputs are to the float model's, in measures that fit the task.

Every output gets cosine similarity, SQNR (dB) and max/mean absolute error: they mean something for
a detector's box regressions, a text detector's probability map or a voice detector's state as much
as for a classifier's scores. Top-1 agreement and accuracy are computed only for a classifier: a
model whose first output holds one score vector per sample (shape ``[batch, classes]``, classes > 1),
or whatever ``--task`` says. Pure functions over arrays: no runtime, no files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from device_agent.bundle.manifest import TensorInfo

Task = Literal["auto", "classification", "other"]
TASKS: tuple[str, ...] = ("auto", "classification", "other")
LOW_COSINE = 0.9  # an output below this cosine against float is flagged in tables, reports and a warning line


@dataclass(frozen=True)
class OutputDiff:
    """How far one output of the candidate is from the reference's (a measurement, not an exception)."""

    name: str
    max_abs_error: float
    mean_abs_error: float
    cosine: float  # mean over samples of the per-sample cosine similarity
    sqnr_db: float  # signal-to-quantization-noise ratio over all samples; inf when identical

    @property
    def low(self) -> bool:
        return self.cosine < LOW_COSINE


def output_diff(name: str, got: np.ndarray, want: np.ndarray) -> OutputDiff:
    """Cosine, SQNR and abs errors of ``got`` against ``want`` (samples along axis 0)."""
    n = len(want) if want.ndim else 1
    g, w = got.reshape(n, -1).astype(np.float64), want.reshape(n, -1).astype(np.float64)
    diff = np.abs(g - w)
    norms = np.linalg.norm(g, axis=1) * np.linalg.norm(w, axis=1)
    both_zero = (np.linalg.norm(g, axis=1) == 0) & (np.linalg.norm(w, axis=1) == 0)
    cos = np.where(norms > 0, np.sum(g * w, axis=1) / np.maximum(norms, 1e-30), np.where(both_zero, 1.0, 0.0))
    return OutputDiff(name, float(diff.max(initial=0.0)), float(diff.mean()), float(cos.mean()), sqnr_db(w, g))


def sqnr_db(reference: np.ndarray, noisy: np.ndarray) -> float:
    """10·log10(signal power / error power) in dB; ``inf`` when the arrays are equal."""
    ref = np.asarray(reference, np.float64)
    noise = float(np.mean((ref - np.asarray(noisy, np.float64)) ** 2)) if ref.size else 0.0
    if noise == 0.0:
        return float("inf")
    return float(10 * np.log10(max(float(np.mean(ref**2)), 1e-30) / noise))


def diffs(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> list[OutputDiff]:
    """One ``OutputDiff`` per output of ``want``, in its order."""
    return [output_diff(name, got[name], want[name]) for name in want]


def worst(outputs: Sequence[OutputDiff]) -> OutputDiff | None:
    """The output with the lowest cosine (what ``--min-cosine`` bounds)."""
    return min(outputs, key=lambda d: d.cosine, default=None)


def is_classifier(outputs: Sequence[TensorInfo], task: Task = "auto") -> bool:
    """Whether top-1 measures apply: ``--task`` when given, else a first output shaped ``[batch, classes>1]``."""
    if task != "auto":
        return task == "classification"
    if not outputs:
        return False
    shape = outputs[0].shape
    return len(shape) == 2 and shape[1] > 1


def warning(variant: str, outputs: Sequence[OutputDiff]) -> str | None:
    """The warning line for a variant with an output below ``LOW_COSINE``, or None."""
    low = [d for d in outputs if d.low]
    if not low:
        return None
    named = ", ".join(f"{d.name} cosine {d.cosine:.3f}" for d in low)
    return (
        f"warning: {variant} is far from the float model ({named} < {LOW_COSINE:g}): "
        "check the calibration data and the per-layer table before shipping it"
    )
