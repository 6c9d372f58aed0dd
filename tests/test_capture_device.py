"""Capture on the device: the policy's parsing and persistence, the rules (on a real LiteRT model), the
bounded store, and what the engine's hot path hands over."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest

from device_agent import protocol as P
from device_agent.bundle import PrivateKey, TrustStore
from device_agent.capture.control import Capture
from device_agent.capture.npz import read_sample
from device_agent.capture.policy import CapturePolicy
from device_agent.capture.sampler import BURST_S, DRIFT_EVERY, NEVER, REASON, Sampler, drift_score
from device_agent.capture.store import CaptureStore, sample_names
from device_agent.engine import InferenceEngine
from device_agent.errors import PayloadError
from device_agent.model import LoadedModel
from fleet.sim.noise import shift_inputs
from tests.support.agent_harness import package_tiny

IDENTITY = {"fleet": "f", "device": "dev-1", "sku": "b"}


@pytest.fixture
def model(tiny_models: dict[str, Path], release_key: PrivateKey) -> LoadedModel:
    data = package_tiny(tiny_models, release_key, "1.0.0", 1)
    return LoadedModel.load(data, TrustStore.of([release_key.public_key]), slot="a")


def _inputs(model: LoadedModel) -> list[dict[str, np.ndarray]]:
    inputs, _ = model.selftest_samples()
    n = len(next(iter(inputs.values())))
    return [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(n)]


def test_policy_parses_strictly_and_round_trips_through_cmd_capture() -> None:
    policy = CapturePolicy("p1", low_confidence=0.6, drift=0.5, random=0.001, per_class_max=50, until=2e9)
    cmd = P.CaptureCommand(request_id="capture-p1-on-abc", policy=policy)
    back = P.parse_command(P.CMD_CAPTURE, P.encode(cmd))
    assert isinstance(back, P.CaptureCommand) and back.policy == policy
    assert P.topic("f", "dev-1", P.CMD_CAPTURE) == "edgefleet/v1/f/dev-1/cmd/capture"
    for bad in ({"id": "p1", "random": 2}, {"id": "P!"}, {"id": "p1", "upload_url": "file:///etc/passwd"}, None):
        with pytest.raises(PayloadError):
            P.parse_command(P.CMD_CAPTURE, json.dumps({"request_id": "r1", "policy": bad}).encode())
    assert not CapturePolicy("p1", enabled=False).active(0) and not CapturePolicy("p1", until=10).active(11)
    assert CapturePolicy("p1", model="digits@1.0.0").applies_to("digits", "1.0.0")
    assert not CapturePolicy("p1", model="digits@1.0.0").applies_to("digits", "1.1.0")
    assert "token" not in CapturePolicy("p1", token="a" * 64).public()


def test_the_store_never_exceeds_its_bounds_and_drops_the_oldest_first(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = CaptureStore(root, max_bytes=10_000, max_count=5)
    for i in range(40):
        assert store.add(f"{i:013d}.sample", bytes(1500 + i))
        assert sum(p.stat().st_size for p in root.iterdir()) <= 10_000 and len(store) <= 5  # on disk, at once
    assert store.peak_bytes <= 10_000
    names = list(sample_names(root))
    assert names == store.names() == [f"{i:013d}.sample" for i in range(40 - len(names), 40)]  # the newest
    assert store.dropped == 40 - len(names)
    assert not store.add("big.sample", bytes(10_001)) and store.dropped == 41 - len(names)  # never fits: counted
    store.close()
    reopened = CaptureStore(root, max_bytes=4000, max_count=5)  # bounds shrank while it was off
    assert reopened.size_bytes <= 4000 and 1 <= len(reopened) <= 2
    assert reopened.remove(["0000000000039.sample", "nope.sample"]) == 1


def test_rules_low_confidence_random_quota_and_hourly_cap(tmp_path: Path, model: LoadedModel) -> None:
    store = CaptureStore(tmp_path / "s", 1 << 20, 1000)
    now = [1000.0]
    sampler = Sampler(store, IDENTITY, clock=lambda: now[0])
    engine = InferenceEngine(model)
    samples = _inputs(model)
    engine.predict(samples[0])
    assert len(store) == 0  # no sink, no policy: nothing is even offered
    engine.capture = sampler
    sampler.set_policy(CapturePolicy("p1", low_confidence=1.0, per_class_max=2, max_per_hour=1000))
    for feeds in samples:
        engine.predict(feeds)
    sampler.drain()
    top1 = [int(engine.model.classify(engine.model.predict(f))[0][0]) for f in samples]  # type: ignore[index]
    assert len(store) == sum(min(top1.count(c), 2) for c in set(top1))  # at most 2 per class
    assert sampler.counts["quota"] == len(samples) - len(store) and sampler.per_class == {
        c: min(top1.count(c), 2) for c in set(top1)
    }
    meta, arrays = read_sample(store.oldest(1, 1 << 20)[0][1], max_arrays=8, max_bytes=1 << 20)
    assert meta["reason"] == "low-confidence" and meta["model"]["name"] == "digits" and meta["device"] == "dev-1"
    given = [next(iter(f.values())).astype(np.float32) for f in samples]
    assert any(np.array_equal(arrays[0], g) for g in given) and len(arrays) == 2  # the exact input, then the output

    store.clear()
    sampler.set_policy(CapturePolicy("p2", random=1.0, max_per_hour=3))
    for feeds in samples:
        engine.predict(feeds)
    sampler.drain()
    assert len(store) == 3 and sampler.counts["rate_limited"] > 0  # the hourly cap
    now[0] += 3601
    sampler._refresh_budget()  # what the worker does when idle
    assert not sampler.over_budget
    sampler.set_policy(CapturePolicy("p2", random=1.0, until=now[0] - 1))  # expired: off
    assert sampler.policy is None


def test_drift_outliers_score_high_against_the_bundles_reference(tmp_path: Path, model: LoadedModel) -> None:
    samples = _inputs(model)
    clean = [drift_score(model, {model.manifest.inputs[0].name: next(iter(f.values()))}) for f in samples]
    shifted = [
        drift_score(model, {model.manifest.inputs[0].name: next(iter(shift_inputs(f, 3.0).values()))}) for f in samples
    ]
    assert np.median(shifted) > 4 * np.median(clean) and np.median(shifted) > 0.5
    store = CaptureStore(tmp_path / "s", 1 << 20, 1000)
    sampler = Sampler(store, IDENTITY)
    sampler.drift_max_per_s = float("inf")  # every 50th inference, however fast this machine runs them
    engine = InferenceEngine(model)
    engine.capture = sampler
    sampler.set_policy(CapturePolicy("p1", drift=0.5, max_per_hour=10_000))
    for i in range(DRIFT_EVERY * 4):
        engine.predict(samples[i % len(samples)])  # clean: scored, not captured
    sampler.drain()
    assert sampler.counts["not_drift"] == 4 and len(store) == 0
    for i in range(DRIFT_EVERY * 4):
        engine.predict(shift_inputs(samples[i % len(samples)], 3.0))
    sampler.drain()
    assert len(store) == 4
    reasons = {read_sample(data, max_arrays=8, max_bytes=1 << 20)[0]["reason"] for _, data in store.oldest(99, 1 << 30)}
    assert reasons == {"drift"}


def test_capture_persists_its_policy_and_threads_stop(tmp_path: Path, model: LoadedModel) -> None:
    cap = Capture(tmp_path / "capture", IDENTITY)
    engine = InferenceEngine(model)
    cap.attach(engine)
    assert engine.capture is None and not cap.live  # off by default
    cap.apply(CapturePolicy("p1", random=1.0, token="a" * 64, upload_url="http://127.0.0.1:9/x"))
    assert engine.capture is not None and (tmp_path / "capture/policy.json").stat().st_mode & 0o777 == 0o600
    again = Capture(tmp_path / "capture", IDENTITY)
    assert again.policy == cap.policy  # a restart keeps it
    stop = threading.Event()
    threads = [threading.Thread(target=t, daemon=True) for _, t in cap.threads(stop)]
    for t in threads:
        t.start()
    engine.predict(_inputs(model)[0])
    stop.set()
    cap._wake.set()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    cap.apply(CapturePolicy("p1", enabled=False))
    assert engine.capture is None and cap.status()["policy"]["enabled"] is False


def test_edge_agent_status_shows_the_policy_without_its_token(
    tmp_path: Path, tiny_models: dict[str, Path], release_key: PrivateKey, key_files: tuple[Path, Path]
) -> None:
    from click.testing import CliRunner

    from device_agent.cli import cli as edge_agent
    from tests.support.agent_harness import flash_device

    home = flash_device(
        tmp_path, package_tiny(tiny_models, release_key, "1.0.0", 1), "mqtt://127.0.0.1:9", key_files[1]
    )
    out = CliRunner().invoke(edge_agent, ["status", "--home", str(home.root)]).output
    assert "capture off (no policy)" in out
    Capture(home.root / "capture", IDENTITY).apply(CapturePolicy("p7", low_confidence=0.6, token="b" * 64))
    result = CliRunner().invoke(edge_agent, ["status", "--home", str(home.root), "--json"])
    doc = json.loads(result.output)
    assert doc["capture"]["policy"]["id"] == "p7" and "token" not in json.dumps(doc)
    out = CliRunner().invoke(edge_agent, ["status", "--home", str(home.root)]).output
    assert "capture set, agent not running" in out and '"low_confidence": 0.6' in out and "b" * 64 not in out


def test_the_random_rule_selects_its_rate_and_the_drift_rule_every_nth(tmp_path: Path, model: LoadedModel) -> None:
    sampler = Sampler(CaptureStore(tmp_path / "s", 1 << 20, 10), IDENTITY)
    sampler.drift_max_per_s = float("inf")
    sampler.set_policy(CapturePolicy("p1", random=0.1, drift=0.5, max_per_hour=10**7))
    feeds = _inputs(model)[0]
    outputs = model.predict(feeds)
    picked: dict[int, str] = {}  # inference number (1-based) -> the reason it was selected for
    for n in range(1, 10_001):
        sampler.offer(model, feeds, outputs, None, None)  # no classes: only the countdown rules can select
        while sampler._pending:
            assert n not in picked  # one candidate per inference, whatever rules are due
            picked[n] = sampler._pending.popleft()[REASON]
    reasons = list(picked.values())
    # Binomial(10000, 0.1): mean 1000, sd 30 (a drift turn that coincides with a random one counts as random)
    assert 850 < reasons.count("random") < 1150
    # every DRIFT_EVERY-th inference is a candidate (for drift, or for random when both are due), and only those
    turns = set(range(DRIFT_EVERY, 10_001, DRIFT_EVERY))
    assert turns <= picked.keys()
    assert {n for n, why in picked.items() if why == "drift"} <= turns
    assert reasons.count("drift") == len(turns) - sum(picked[n] == "random" for n in turns)
    sampler.drift_max_per_s = 1e-9  # the per-second cap: after one drift candidate, none for a long while
    sampler.set_policy(CapturePolicy("p2", drift=0.5, max_per_hour=10**7))
    drifts = 0
    for _ in range(1000):
        sampler.offer(model, feeds, outputs, None, None)
        while sampler._pending:
            drifts += 1
            sampler._pending.popleft()
    assert drifts == 0  # the last one was just above: the cap holds


def test_the_cpu_budget_pauses_selection_while_overdrawn_and_only_a_live_policy_refills_it(
    tmp_path: Path, model: LoadedModel
) -> None:
    t = [100.0]
    sampler = Sampler(CaptureStore(tmp_path / "s", 1 << 20, 1000), IDENTITY, monotonic=lambda: t[0])
    sampler.cpu_share = 0.02
    policy = CapturePolicy("p1", random=1.0, max_per_hour=10**7)
    sampler.set_policy(policy)
    feeds = _inputs(model)[0]
    outputs = model.predict(feeds)

    def selected(n: int = 10) -> int:
        for _ in range(n):
            sampler.offer(model, feeds, outputs, None, None)
        k = len(sampler._pending)
        sampler._pending.clear()
        return k

    assert selected() == 10
    sampler.charge(1.0)  # a second of capture work: 50 s of a 2 % share (the saved-up burst is far less)
    assert selected() == 0 and sampler.paused_total_s == 0.0
    t[0] += 20.0
    sampler.charge(0.0)
    assert selected() == 0 and sampler.paused_total_s == pytest.approx(20.0)  # still overdrawn by ~0.6 s
    sampler.set_policy(None)
    t[0] += 1000.0  # no policy: the budget does not fill, and the time is not "paused"
    sampler.set_policy(policy)
    sampler.charge(0.0)
    assert selected() == 0 and sampler.paused_total_s == pytest.approx(20.0)
    t[0] += 31.0  # 51 s of a live policy in all: the second of work is paid for
    sampler.charge(0.0)
    assert selected() == 10 and sampler.paused_total_s == pytest.approx(51.0)
    t[0] += 10**6  # a long quiet spell saves up at most the burst
    sampler.charge(0.0)
    sampler.charge(0.051)
    assert selected() == 0


def test_a_flood_policy_on_a_fast_model_is_held_to_the_cpu_budget(tmp_path: Path, model: LoadedModel) -> None:
    """Every inference selected (random 1.0, no cap) on a ~20 µs model: capture is paused for most of the
    time, and the work charged never exceeds the share of the live time plus the burst and one batch."""
    sampler = Sampler(CaptureStore(tmp_path / "s", 1 << 22, 100_000), IDENTITY)
    sampler.cpu_share = 0.02
    charged = [0.0]
    charge = sampler.charge

    def counting(cpu_s: float) -> None:
        charged[0] += cpu_s + sampler._hot_cost
        charge(cpu_s)

    sampler.charge = counting  # type: ignore[method-assign]
    engine = InferenceEngine(model)
    engine.capture = sampler
    sampler.set_policy(CapturePolicy("flood", random=1.0, max_per_hour=10**9))
    start = sampler.monotonic()
    feeds = _inputs(model)
    worst_batch = 0.0
    for i in range(20_000):
        engine.predict(feeds[i % len(feeds)])
        if i % 500 == 499:
            before = charged[0]
            sampler.drain()
            worst_batch = max(worst_batch, charged[0] - before)
    live = sampler.monotonic() - start
    assert sampler.paused_total_s > 0 and sampler.counts["captured"] < 20_000
    assert charged[0] <= 0.02 * live + BURST_S + worst_batch


def test_a_selected_inference_is_queued_by_reference_and_a_lost_countdown_is_rearmed(
    tmp_path: Path, model: LoadedModel
) -> None:
    sampler = Sampler(CaptureStore(tmp_path / "s", 1 << 20, 1000), IDENTITY)
    engine = InferenceEngine(model)
    engine.capture = sampler
    sampler.set_policy(CapturePolicy("p1", low_confidence=1.0, max_per_hour=10**7))  # every inference is under
    feeds = _inputs(model)[0]
    pred = engine.predict(feeds)
    (queued,) = sampler._pending
    name = next(iter(feeds))
    assert queued[1][name] is feeds[name]  # handed over, not copied (the worker encodes it within BATCH_S)
    assert all(queued[2][k] is v for k, v in pred.outputs.items()) and queued[REASON] == "low-confidence"
    sampler._pending.clear()
    sampler.over_budget = True  # over the hourly cap the engine's check never fires, and select does nothing
    assert sampler.due > NEVER // 2 and sampler.floor == -math.inf
    engine.predict(feeds)
    sampler.select(model, feeds, pred.outputs, None, 0.0)
    assert not sampler._pending
    sampler.over_budget = False  # back under the cap: armed again
    engine.predict(feeds)
    assert len(sampler._pending) == 1
    sampler._pending.clear()
    sampler.set_policy(CapturePolicy("p2", random=1.0, max_per_hour=10**7))
    sampler.due = NEVER - 1  # the engine's decrement overwrote the worker's re-arm (two threads, one attribute)
    engine.predict(feeds)
    assert not sampler._pending
    sampler.work()  # the worker's next pass finds the countdown at "never" under a live policy: re-armed
    engine.predict(feeds)
    assert len(sampler._pending) == 1
    sampler._pending.clear()
    sampler.set_policy(CapturePolicy("p3", random=1.0, max_per_hour=10**7))  # its first candidate sizes the queue
    as_list = {name: feeds[name].tolist()}  # a caller may give lists (the model takes them): captured as arrays
    engine.predict(as_list)
    sampler.drain()
    _, arrays = read_sample(sampler.store.oldest(1, 1 << 20)[0][1], max_arrays=8, max_bytes=1 << 20)
    assert np.array_equal(arrays[0], np.asarray(feeds[name], np.float32))


def test_a_bound_engine_has_a_sink_only_while_selection_is_on(tmp_path: Path, model: LoadedModel) -> None:
    """No policy, over the hourly cap, or paused for the CPU budget: the engine has no capture sink, so its
    per-inference check costs nothing; each comes back as selection resumes."""
    t = [100.0]
    sampler = Sampler(CaptureStore(tmp_path / "s", 1 << 20, 1000), IDENTITY, monotonic=lambda: t[0])
    engine = InferenceEngine(model)
    sampler.bind(engine)
    assert engine.capture is None  # off by default
    sampler.set_policy(CapturePolicy("p1", random=1.0, max_per_hour=2))
    assert engine.capture is sampler
    feeds = _inputs(model)
    for f in feeds[:3]:
        engine.predict(f)
    sampler.drain()  # two stored: the hourly cap is reached
    assert len(sampler.store) == 2 and engine.capture is None
    engine.predict(feeds[0])
    assert not sampler._pending
    sampler.set_policy(CapturePolicy("p2", random=1.0, max_per_hour=10**7))  # a new policy, its own cap
    assert engine.capture is sampler
    sampler.charge(10.0)  # overdrawn: paused
    assert engine.capture is None
    t[0] += 10.0 / sampler.cpu_share + 1  # paid for
    sampler.charge(0.0)
    assert engine.capture is sampler
    sampler.set_policy(None)
    assert engine.capture is None


def test_a_countdown_that_runs_out_selects_only_for_a_rule_that_is_on(tmp_path: Path, model: LoadedModel) -> None:
    """'Never' is a finite countdown (a small int is cheaper to count down): when it runs out under a policy
    whose countdown rules are off, nothing is selected and the countdown starts again."""
    sampler = Sampler(CaptureStore(tmp_path / "s", 1 << 20, 1000), IDENTITY)
    engine = InferenceEngine(model)
    sampler.bind(engine)
    sampler.set_policy(CapturePolicy("p1", low_confidence=1e-9, max_per_hour=10**7))  # random 0, drift off
    assert sampler.due == NEVER
    sampler.due = 1  # as after NEVER - 1 inferences
    feeds = _inputs(model)[0]
    engine.predict(feeds)
    assert not sampler._pending and sampler.due == NEVER
    sampler.set_policy(CapturePolicy("p2", low_confidence=1.0, max_per_hour=10**7))  # the rule that is on still is
    sampler.due = 1
    engine.predict(feeds)
    assert [q[REASON] for q in sampler._pending] == ["low-confidence"]
