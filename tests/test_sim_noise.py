"""The simulator's field noise and subtle regressions (fleet/sim/noise.py) on a real LiteRT model: what each
fault does to the served model, decided on counts and recorded values, with a controlled clock and sleep."""

from __future__ import annotations

import copy
import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from device_agent.bundle import PrivateKey, TrustStore
from device_agent.errors import ConfigError, InferenceError, RuntimeRunError
from device_agent.model import LoadedModel
from fleet.sim.config import Fault, SimulationConfig
from fleet.sim.faults import FaultHooks, fault_plan
from fleet.sim.noise import (
    BURST_LENGTH,
    STALL_MAX_S,
    STALL_MIN_S,
    Effects,
    FieldRuntime,
    field_model,
    slower_model,
)
from tests.support.agent_harness import package_tiny


@pytest.fixture
def model(tiny_models: dict[str, Path], release_key: PrivateKey) -> LoadedModel:
    data = package_tiny(tiny_models, release_key, "1.0.0", 1)
    return LoadedModel.load(data, TrustStore.of([release_key.public_key]), slot="a")


def sample(model: LoadedModel) -> dict[str, np.ndarray]:
    inputs, _ = model.selftest_samples()
    return {k: v[:1] for k, v in inputs.items()}


def test_valued_fault_specs_and_their_ranges() -> None:
    assert Fault.parse("digits@1.2.0:b=slower:1.6") == Fault("digits@1.2.0", "b", "slower", 1.6)
    assert Fault.parse("digits@1.2.0=errors:0.05") == Fault("digits@1.2.0", None, "errors", 0.05)
    assert Fault.parse("digits@1.2.0=lowconf:0.1").value == 0.1
    assert Fault.parse("digits@1.2.0=drift:2").kind == "drift"
    with pytest.raises(ConfigError, match="slower must be between 1 and 100"):
        Fault.parse("digits@1.2.0=slower:0.5")
    with pytest.raises(ConfigError, match="errors must be between 0 and 1"):
        Fault.parse("digits@1.2.0=errors:2")
    with pytest.raises(ConfigError, match="slower:F"):
        Fault.parse("digits@1.2.0=slower")


def test_slower_spends_f_minus_one_times_the_whole_inference_busy(model: LoadedModel) -> None:
    ticks = itertools.count()
    clock = lambda: float(next(ticks))  # noqa: E731  one unit per reading: the inner predict takes 1
    before = next(ticks)
    slower_model(model, 4.0, clock=clock).predict(sample(model))
    assert next(ticks) - before == 2 + 3 + 1  # t0, t1, then busy until t1 + 3, the last reading past it


def test_slower_does_not_stretch_a_noise_stall(model: LoadedModel) -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # one unit per reading
        return now[0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    stalling = copy.copy(model)
    stalling.runtime = noise = FieldRuntime(model.runtime, Effects(noise=1.0), random.Random(3), sleep=sleep)
    slow = slower_model(stalling, 4.0, noise, clock=clock)
    t0 = now[0]
    slow.predict(sample(model))
    assert noise.stalled_s >= STALL_MIN_S  # every inference stalls at noise 1
    # t0 and t1 read the clock around the stall (1 unit of work besides it), then busy for 3 units (3 readings)
    assert now[0] - t0 == pytest.approx(2 + noise.stalled_s + 3)


def test_noise_stalls_are_heavy_tailed_within_bounds_and_errors_come_in_bursts(model: LoadedModel) -> None:
    stalls: list[float] = []
    runtime = FieldRuntime(model.runtime, Effects(noise=0.5), random.Random(1), sleep=stalls.append)
    failed = []
    for _ in range(2000):
        try:
            runtime.run(sample(model))
            failed.append(False)
        except RuntimeRunError:
            failed.append(True)
    assert 800 < len(stalls) < 1200 and all(STALL_MIN_S <= s <= STALL_MAX_S for s in stalls)
    assert max(stalls) > 4 * STALL_MIN_S  # the tail
    runs = [len(list(g)) for fail, g in itertools.groupby(failed) if fail]
    assert runs and max(runs) <= BURST_LENGTH and 10 < sum(failed) < 2000 * 0.5


def test_errors_and_drift_and_low_confidence_reach_what_the_engine_records(model: LoadedModel) -> None:
    feeds = sample(model)
    failing = field_model(model, Effects(errors=1.0), random.Random(0))
    with pytest.raises(InferenceError, match="injected"):
        failing.predict(feeds)
    clean = model.predict(feeds)
    c = SimulationConfig(1, "f", "mqtt://x", Path("."), [], faults=(Fault.parse("digits@1.0.0:b=drift:3"),))
    hooks = FaultHooks(fault_plan(c, "b", lambda: None, "dev-1"))
    shifted = hooks.replay_inputs(model, dict(feeds))  # the engine (its statistics, capture) sees these
    assert all(not np.array_equal(shifted[k], feeds[k]) for k in feeds)
    drifted = hooks.serve(model).predict(shifted)
    assert any(not np.allclose(clean[k], drifted[k]) for k in clean)
    other_sku = FaultHooks(fault_plan(c, "a", lambda: None, "dev-2"))
    assert other_sku.replay_inputs(model, feeds) is feeds
    low = field_model(model, Effects(lowconf=0.1), random.Random(0))
    top, conf = model.classify(clean)  # type: ignore[misc]
    low_top, low_conf = low.classify(clean)  # type: ignore[misc]
    assert low_top.tolist() == top.tolist() and np.allclose(low_conf, np.maximum(conf - 0.1, 0.0))
    assert field_model(model, Effects(), random.Random(0)) is model  # nothing injected: the model itself


def test_the_plan_applies_noise_to_every_release_and_faults_to_theirs(model: LoadedModel, tmp_path: Path) -> None:
    faults = tuple(Fault.parse(f) for f in ("digits@1.0.0:b=slower:1.6", "digits@1.0.0:b=errors:0.05"))
    c = SimulationConfig(1, "f", "mqtt://x", tmp_path, [], faults=faults, noise=0.02)
    on_b = FaultHooks(fault_plan(c, "b", lambda: None, "dev-1")).serve(model)
    on_a = FaultHooks(fault_plan(c, "a", lambda: None, "dev-2")).serve(model)
    assert isinstance(on_b.runtime, FieldRuntime) and isinstance(on_a.runtime, FieldRuntime)
    assert on_b.runtime.effects == Effects(noise=0.02, slower=1.6, errors=0.05)
    assert on_a.runtime.effects == Effects(noise=0.02)
    quiet = SimulationConfig(1, "f", "mqtt://x", tmp_path, [])
    assert FaultHooks(fault_plan(quiet, "a", lambda: None, "dev-2")).serve(model) is model
