"""Injected faults, delivered through the device code's hook interfaces (it knows nothing of them).

- ``selftest``: the release's self-test result is replaced by a failure (``UpdateHooks.after_selftest``);
- ``slow``: on probation the release's runtime is wrapped once in ``SlowRuntime`` (``UpdateHooks.serve``);
- ``crash``: the device dies just before installing the release (``UpdateHooks.before_install``):
  ``on_crash`` ends the process, or a simulator kills that one device and raises ``DeviceCrashed``;
- field noise (every device) and the subtle regressions ``slower:F``, ``errors:R``, ``lowconf:D``, ``drift:S``:
  the served model is wrapped by ``fleet.sim.noise`` (``UpdateHooks.serve``, never during a self-test), and
  ``drift:S`` shifts the replayed inputs (``UpdateHooks.replay_inputs``);
- outages: ``OutageClient`` drops the MQTT connection and refuses to reconnect for a while, and
  ``OutageBackoff`` schedules the reconnection for when the outage ends.
"""

from __future__ import annotations

import copy
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from device_agent.agent import Backoff
from device_agent.errors import TransportError
from device_agent.hooks import Halt, UpdateHooks
from device_agent.mqtt import MqttClient, Will
from device_agent.runtime import Runtime
from fleet.sim.noise import Effects, field_model, shift_inputs

if TYPE_CHECKING:
    import numpy as np

    from device_agent.model import LoadedModel
    from device_agent.selftest import SelfTestResult
    from fleet.sim.config import SimulationConfig


class DeviceCrashed(Halt):
    """Raised by a simulator's ``FaultPlan.on_crash`` to end that device's deployment worker."""


def release_key(model: LoadedModel) -> str:
    return f"{model.manifest.name}@{model.manifest.version}"


@dataclass
class FaultPlan:
    """Injected faults keyed by ``name@version``."""

    selftest: set[str] = field(default_factory=set)  # the self-test fails
    slow_s: dict[str, float] = field(default_factory=dict)  # extra latency per inference in probation
    crash: set[str] = field(default_factory=set)  # the device dies while installing
    on_crash: Callable[[], None] = field(default=lambda: os._exit(70))  # a simulator crashes one device only
    effects: dict[str, Effects] = field(default_factory=dict)  # slower/errors/lowconf/drift per release
    noise: float = 0.0  # field noise on every served model, whatever its release
    rng: random.Random = field(default_factory=random.Random)  # the device's own noise


class SlowRuntime(Runtime):
    """A runtime whose every run takes ``extra_s`` longer (the wait happens outside the inner runtime)."""

    def __init__(self, inner: Runtime, extra_s: float) -> None:
        self.inner, self.extra_s = inner, extra_s
        self.name = inner.name  # type: ignore[misc]
        self._version, self._inputs, self._outputs = inner.version, inner.inputs, inner.outputs

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        outputs = self.inner.run(feeds)
        time.sleep(self.extra_s)
        return outputs


class FaultHooks(UpdateHooks):
    """The update hooks that apply a ``FaultPlan``."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan

    def before_install(self, model: LoadedModel) -> None:
        if release_key(model) in self.plan.crash:
            self.plan.on_crash()  # die mid-install, as a power cut would

    def after_selftest(self, model: LoadedModel, result: SelfTestResult) -> SelfTestResult:
        if release_key(model) in self.plan.selftest:
            return type(result)(False, result.max_abs_error, result.top1_agreement, "injected self-test fault")
        return result

    def replay_inputs(self, model: LoadedModel, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        effects = self.plan.effects.get(release_key(model))
        return shift_inputs(feeds, effects.drift) if effects is not None else feeds

    def serve(self, model: LoadedModel) -> LoadedModel:
        key = release_key(model)
        effects = replace(self.plan.effects.get(key, Effects()), noise=self.plan.noise)
        model = field_model(model, effects, self.plan.rng)
        extra_s = self.plan.slow_s.get(key, 0.0)
        if not extra_s:
            return model
        slow = copy.copy(model)  # the same verified model, on a slower runtime
        slow.runtime = SlowRuntime(model.runtime, extra_s)
        return slow


def fault_plan(c: SimulationConfig, sku: str, on_crash: Callable[[], None], device: str = "") -> FaultPlan:
    """The injected faults that apply to ``device`` of ``sku`` (its noise seeded by the device id)."""
    plan = FaultPlan(on_crash=on_crash, noise=c.noise, rng=random.Random(f"{c.seed}/{device}"))
    for f in c.faults:
        if f.sku not in (None, sku):
            continue
        if f.kind == "selftest":
            plan.selftest.add(f.release)
        elif f.kind == "slow":
            plan.slow_s[f.release] = c.slow_extra_s
        elif f.kind == "crash":
            plan.crash.add(f.release)
        else:
            effects = plan.effects.get(f.release, Effects())
            plan.effects[f.release] = replace(effects, **{f.kind: f.value})
    return plan


class Outage:
    """Until when a device stays away from its broker (shared by its client and its backoff)."""

    def __init__(self) -> None:
        self.until = 0.0

    def remaining(self) -> float:
        return self.until - time.monotonic()


class OutageClient(MqttClient):
    """An ``MqttClient`` that can lose its connection abruptly and stay offline for a while."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outage = Outage()

    def go_offline(self, seconds: float) -> None:
        """Drop the connection without a goodbye (the broker publishes the will); no reconnect for ``seconds``."""
        self.outage.until = time.monotonic() + seconds
        self.abort()

    def connect(self, will: Will | None = None) -> None:
        if self.outage.remaining() > 0:
            raise TransportError("offline (simulated outage)")
        super().connect(will)


class OutageBackoff(Backoff):
    """The agent's backoff, but never sooner than the end of the device's outage."""

    def __init__(self, min_s: float, max_s: float, outage: Outage) -> None:
        super().__init__(min_s, max_s)
        self.outage = outage

    def next_delay(self) -> float:
        return max(super().next_delay(), self.outage.remaining())
