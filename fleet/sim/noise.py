"""Field noise and subtle regressions for simulated devices, as a runtime (and model) wrapper.

``FieldRuntime`` wraps the runtime a device serves (through ``UpdateHooks.serve``, so never during a self-test):

- noise ``P`` (every device, whatever its release): each inference stalls with probability P by a heavy-tailed
  delay (5 ms × Pareto(2): 6 % of stalls exceed 20 ms; at most 200 ms), and with probability P/20 an error
  burst starts: each of the next 10 inferences fails with probability 1/2 (a flaky sensor, a busy bus);
- ``slower:F``: every inference takes F times as long, as the engine times it (input conversion, the runtime,
  output conversion: ``slower_model``); the extra time is spent busy, as a slower kernel would, and a noise stall
  is not stretched. Timing the whole ``predict`` matters in a simulation: with many devices in one process, most
  of a sub-millisecond inference's measured latency is waiting for the interpreter lock, not the runtime;
- ``errors:R``: each inference fails with probability R;
- ``drift:S``: the replayed inputs are shifted by S standard deviations (of each input tensor) before the
  engine sees them (``shift_inputs``, through ``UpdateHooks.replay_inputs``), so the device's input drift
  statistics, its outputs and what it captures all drift.

``lowconf:D`` lowers the top-1 confidence the engine records by D (``low_confidence``: a model wrapper).
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from device_agent.errors import RuntimeRunError
from device_agent.runtime import Runtime

if TYPE_CHECKING:
    import numpy as np

    from device_agent.model import LoadedModel

STALL_MIN_S, STALL_MAX_S = 0.005, 0.2  # seconds: the heavy-tailed stall's range
BURST_LENGTH = 10  # inferences an error burst lasts
BURST_ERROR_RATE = 0.5  # failing share of a burst's inferences


@dataclass(frozen=True)
class Effects:
    """What a served model suffers: field noise (any release) and a release's injected regression."""

    noise: float = 0.0  # probability of a stall per inference (and P/20 of an error burst)
    slower: float = 1.0  # latency factor
    errors: float = 0.0  # added error probability per inference
    drift: float = 0.0  # input shift, in standard deviations
    lowconf: float = 0.0  # drop of the recorded top-1 confidence

    @property
    def runtime(self) -> bool:
        """Whether the runtime needs wrapping (``lowconf`` and ``slower`` wrap the model; ``drift`` shifts the
        replayed inputs)."""
        return bool(self.noise or self.errors)


class FieldRuntime(Runtime):
    """A runtime with field noise and a release's regression; the inner runtime does the real work."""

    def __init__(
        self,
        inner: Runtime,
        effects: Effects,
        rng: random.Random,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner, self.effects, self.rng, self.sleep = inner, effects, rng, sleep
        self.name = inner.name  # type: ignore[misc]
        self._version, self._inputs, self._outputs = inner.version, inner.inputs, inner.outputs
        self._burst_left = 0
        self.stalled_s = 0.0  # the last run's stall (a device runs one inference at a time)

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        e = self.effects
        self._maybe_fail()
        outputs = self.inner.run(feeds)
        self.stalled_s = 0.0
        if e.noise and self.rng.random() < e.noise:
            self.stalled_s = min(STALL_MAX_S, STALL_MIN_S * self.rng.paretovariate(2.0))
            self.sleep(self.stalled_s)
        return outputs

    def _maybe_fail(self) -> None:
        e, rng = self.effects, self.rng
        if e.noise and self._burst_left == 0 and rng.random() < e.noise / 20:
            self._burst_left = BURST_LENGTH
        failing = False
        if self._burst_left:
            self._burst_left -= 1
            failing = rng.random() < BURST_ERROR_RATE
        if failing or (e.errors and rng.random() < e.errors):
            raise RuntimeRunError("injected inference error (simulated)")


def shift_inputs(feeds: dict[str, np.ndarray], sigmas: float) -> dict[str, np.ndarray]:
    """Every input shifted by ``sigmas`` of its own standard deviation (field drift of a sensor)."""
    return {name: _shift(value, sigmas) for name, value in feeds.items()} if sigmas else feeds


def _shift(value: np.ndarray, sigmas: float) -> np.ndarray:
    """``value`` shifted by ``sigmas`` of its own standard deviation, clipped to its dtype's range."""
    import numpy as np

    x = np.asarray(value)
    shifted = x.astype(np.float64) + sigmas * float(x.std() or 1.0)
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        return np.clip(np.rint(shifted), info.min, info.max).astype(x.dtype)
    return shifted.astype(x.dtype)


def low_confidence(model: LoadedModel, drop: float) -> LoadedModel:
    """A copy of ``model`` whose recorded top-1 confidence is ``drop`` lower (the outputs are untouched)."""
    import numpy as np

    inner = model.classify
    lowered = copy.copy(model)

    def classify(outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        result = inner(outputs)
        return None if result is None else (result[0], np.maximum(result[1] - drop, 0.0))

    lowered.classify = classify  # type: ignore[method-assign]
    return lowered


def slower_model(
    model: LoadedModel, factor: float, noise: FieldRuntime | None = None, clock: Callable[[], float] = time.perf_counter
) -> LoadedModel:
    """A copy of ``model`` whose ``predict`` takes ``factor`` times as long, busy, leaving ``noise``'s stall as is."""
    inner = model.predict
    slowed = copy.copy(model)

    def predict(feeds: Mapping[str, np.ndarray], *, raw: bool = False) -> dict[str, np.ndarray]:
        t0 = clock()
        outputs = inner(feeds, raw=raw)
        t1 = clock()
        until = t1 + max(0.0, t1 - t0 - (noise.stalled_s if noise else 0.0)) * (factor - 1.0)
        while clock() < until:  # busy, as a slower kernel would be
            pass
        return outputs

    slowed.predict = predict  # type: ignore[method-assign]
    return slowed


def field_model(model: LoadedModel, effects: Effects, rng: random.Random) -> LoadedModel:
    """``model`` as a simulated device in the field serves it: same verified bundle, wrapped runtime and model."""
    if effects.lowconf:
        model = low_confidence(model, effects.lowconf)
    noise = None
    if effects.runtime:
        model = copy.copy(model)
        model.runtime = noise = FieldRuntime(model.runtime, effects, rng)
    return slower_model(model, effects.slower, noise) if effects.slower > 1.0 else model
