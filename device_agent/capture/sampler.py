"""Capture rules, split so the inference hot path pays almost nothing.

On the hot path the engine itself checks every inference (inline, no call): a countdown to the next
inference the random or the drift rule is due on, and the top-1 confidence against the low-confidence
floor; both say "never" while no policy is live, over the hourly cap or paused for the CPU budget. Only an
inference the check picks reaches ``Sampler.select``, which appends its arrays by reference to a bounded
deque (full: counted in ``overflow``, never waited for); no lock and no wake-up per candidate (a deque's
append is atomic), the worker is woken once the deque is half full. ``offer`` is the same check as a call.

A worker thread does the rest in batches (every ``BATCH_S`` or when woken), so it takes the GIL and the disk
a few times a second rather than once per sample: the drift score (PSI of the sample's input values against the bundle's
reference histograms, the largest over the inputs: the same measure the telemetry's ``psi_max`` uses, on
one sample), the per-class quota, the hourly cap, encoding and the store.

Capture never takes more than ``CPU_SHARE`` of one core, whatever the rules select: the time of every
selection on the hot path and the worker's CPU time per batch are charged to a budget that fills at
``CPU_SHARE`` of the wall-clock time while a policy is live (up to ``BURST_S`` saved). Overdrawn, selection
pauses (the hot path returns at its first line, as over the hourly cap) until the budget is back; the time
paused is counted (``paused_s``). A model this costs anything on is one whose inference takes tens of
microseconds and whose rules select thousands of samples a minute: more than any store or upload keeps
up with (the way ``perf`` lowers its sample rate when sampling takes too long).
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device_agent.bundle.manifest import TensorInfo
from device_agent.capture.npz import Frame, frames, write_sample
from device_agent.capture.policy import DRIFT_DEFAULT, CapturePolicy
from device_agent.capture.store import SUFFIX, CaptureStore
from device_agent.model import LoadedModel
from device_agent.runtime.base import dequantize
from device_agent.stats import _Histogram, psi

log = logging.getLogger("edge-agent")
QUEUE_MAX = 256  # selected inferences waiting for the worker at most...
QUEUE_BYTES = 8 << 20  # ...and the bytes of their copies at most (a large model's queue is shorter)
BATCH_S = 0.2  # the worker's pass over the waiting candidates, at least this often (and when half full)
DRIFT_EVERY = 50  # one inference in this many is scored for drift (a sampled check keeps the hot path cheap)
DRIFT_MAX_PER_S = 5.0  # ...and at most this many per second (18,000 an hour: far more than any hourly cap keeps)
DRIFT_VALUES = 4096  # values of an input a drift score looks at, at most (an even stride over the tensor)
# Of one core's time, at most, for capture's work: as timed (selections on the inference path, the worker's rules,
# encoding and store), plus ``UNTIMED_S`` per selected inference for what no timer sees: the caches a rare path
# leaves cold for the inferences after it (~8 µs on tiny-digits) and the inline checks on the inferences before it
# (~0.15 µs each: ~15 µs a selection at 1 %). Without it, 1.25 % let tiny-digits (~16 µs an inference) at an uncapped
# 1 % lose 3.5-4 % of its throughput; a lower share (0.5 %) instead held back MobileNetV2-96 at 1 % (110 KB samples,
# ~0.3 ms each to store) 38 % of the time (docs/benchmarks.md, "Capture's CPU share, third pass").
CPU_SHARE = 0.0125
UNTIMED_S = 25e-6
BURST_S = 0.05  # capture CPU time saved up at most (a burst of selections after a quiet spell)
HOUR = 3600.0
# A countdown that does not run out for hours (3 at 100,000 inferences a second; then ``_due`` finds no rule due
# and starts it again). Under 2**30, so the engine's decrement is CPython's one-digit int arithmetic: against
# 1 << 62 it saved ~0.3 % of a 16 µs model's throughput, measured side by side.
NEVER = (1 << 30) - 1


@dataclass
class _Live:
    """What the hot path reads, prepared when the policy or the model changes."""

    policy: CapturePolicy
    model: LoadedModel | None
    low: float | None
    rate: float
    drift_every: int  # 0: the drift rule is off
    queue_max: int = 0  # candidates of ``model`` that may wait for the worker (0: the policy skips it)
    wake_at: int = 0  # ...and at how many the worker is woken (half full)
    floor: float = field(init=False)  # confidence below which an inference is selected (-inf: rule off)
    gaps: list[int] = field(default_factory=list)  # the random rule's next gaps (geometric with ``rate``)

    def __post_init__(self) -> None:
        self.floor = -math.inf if self.low is None else self.low


# A selected inference as the hot path leaves it for the worker: a plain tuple, the cheapest object to make
# (model, feeds, outputs, classes, conf, reason, ts); ``REASON`` indexes the reason.
_Arrays = dict[str, np.ndarray]
_Pending = tuple[LoadedModel, _Arrays, _Arrays, tuple[np.ndarray, np.ndarray] | None, float | None, str, float]
REASON = 5


class Sampler:
    """The rules of one device's capture; ``offer`` on the hot path, ``run`` on a worker thread."""

    def __init__(
        self,
        store: CaptureStore,
        identity: Mapping[str, str],
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.identity, self.clock, self.monotonic = store, dict(identity), clock, monotonic
        self._live: _Live | None = None
        self._hot: _Live | None = None  # what ``select`` reads: the live policy while under the cap and budget
        self._engine: Any = None  # the engine ``bind`` gave: its ``capture`` is this sampler while ``_hot``
        self._pending: deque[_Pending] = deque()  # appended by the hot path, taken by the worker
        self._wake = threading.Event()
        self._np_rng = np.random.default_rng()
        self.due = NEVER  # inferences until the random or the drift rule is due (the engine counts it down)
        self.floor = -math.inf  # confidence under which an inference is selected (-inf: none is)
        self._to_random = self._to_drift = 1 << 62
        self._last_drift = -1e9  # monotonic() of the last drift candidate
        self._drift_gap = DRIFT_EVERY  # inferences between drift turns (grows while turns come too often)
        self.drift_max_per_s = DRIFT_MAX_PER_S
        self._seq = 0
        self._salt = f"{random.getrandbits(32):08x}"  # with the time and _seq, an id no other run of the agent makes
        self._meta_cache: tuple[Any, ...] | None = None  # (model, policy, JSON, headers): _shared
        self._hour: deque[float] = deque()  # times of this hour's captures
        self._over = False  # the hourly cap is reached: the hot path selects nothing
        self._paused = False  # the CPU budget is overdrawn: the hot path selects nothing
        self.cpu_share = CPU_SHARE
        self._credit = BURST_S  # capture CPU seconds that may be spent now
        self._credit_t = monotonic()  # when the credit was last topped up
        self._hot_cost = 0.0  # seconds the hot path spent on selections since the worker last charged them
        self.paused_s = 0.0  # time a live policy's selection was paused for the CPU budget (to ``_credit_t``)
        self._last_id: str | None = None  # the last live policy: its quotas and hourly count go on if it comes back
        self.per_class: dict[int, int] = {}
        self.counts = {"offered": 0, "overflow": 0, "captured": 0, "rate_limited": 0, "quota": 0, "not_drift": 0}

    # --- policy ------------------------------------------------------------------------------------------

    def set_policy(self, policy: CapturePolicy | None) -> None:
        self._top_up()  # the CPU budget fills only while a policy is live
        if policy is None or not policy.active(self.clock()):
            self._live = None
            self._sync_hot()
            return
        if self._last_id != policy.id:  # a new policy: its own quotas and cap
            self.per_class.clear()
            self._hour.clear()
            self.over_budget = False
            self._last_id = policy.id
        every = DRIFT_EVERY if policy.drift is not None else 0
        self._drift_gap = every
        self._live = _Live(policy, None, policy.low_confidence, policy.random, every)
        self._hot = None  # armed afresh by _sync_hot
        self._sync_hot()

    @property
    def over_budget(self) -> bool:
        return self._over

    @over_budget.setter
    def over_budget(self, value: bool) -> None:
        self._over = value
        self._sync_hot()

    def bind(self, engine: Any) -> None:
        """Be ``engine``'s capture sink exactly while selection is on: no policy, over the hourly cap (a capped
        policy's usual state) or paused for the CPU budget, the engine has none and its check costs nothing."""
        self._engine = engine
        self._sync_hot()

    def _sync_hot(self) -> None:
        """Over the hourly cap or the CPU budget the engine's check never fires (a capped policy is the common
        case); selection that starts again starts a new countdown (memoryless: the random rule's law holds)."""
        hot = None if self._over or self._paused else self._live
        if hot is None:
            self.due, self.floor = NEVER, -math.inf
        elif hot is not self._hot or self.due > NEVER // 2:  # (re)armed, or a lost write left it "never"
            self._to_random, self._to_drift = self._random_gap(hot), self._drift_gap if hot.drift_every else NEVER
            self.due, self.floor = min(self._to_random, self._to_drift), hot.floor
        self._hot = hot
        if self._engine is not None:
            self._engine.capture = None if hot is None else self

    @property
    def policy(self) -> CapturePolicy | None:
        live = self._live
        return live.policy if live else None

    # --- the CPU budget ---------------------------------------------------------------------------------

    def _top_up(self) -> None:
        """Credit for the time since the last top-up (and that time counted as paused if it was), both only
        while a policy is live."""
        now = self.monotonic()
        if self._live is not None:
            elapsed = now - self._credit_t
            self._credit = min(BURST_S, self._credit + self.cpu_share * elapsed)
            self.paused_s += elapsed if self._paused else 0.0
        self._credit_t = now

    @property
    def paused_total_s(self) -> float:
        """Time a live policy's selection was paused for the CPU budget, up to now."""
        now = self.monotonic() - self._credit_t if self._live is not None and self._paused else 0.0
        return self.paused_s + now

    def charge(self, cpu_s: float) -> None:
        """Charge the worker's ``cpu_s`` and the hot path's selections since the last charge to the budget;
        pause or resume selection on the result (the worker, once a batch and every ``BATCH_S``)."""
        self._top_up()
        hot, self._hot_cost = self._hot_cost, 0.0  # a selection timed just now may be lost: a fraction of one
        self._credit -= cpu_s + hot
        paused = self._credit < 0
        if paused != self._paused:
            self._paused = paused
            self._sync_hot()
            log.debug("capture: selection %s (CPU budget)", "paused" if paused else "resumed")

    # --- the hot path -----------------------------------------------------------------------------------

    def offer(
        self,
        model: LoadedModel,
        feeds: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        classes: tuple[np.ndarray, np.ndarray] | None,
        conf: float | None,
    ) -> None:
        """One inference: the engine's inline check (``InferenceEngine.predict``), then ``select`` if it
        fires. ``conf``: the least top-1 confidence of ``classes`` as a Python float (None without classes)."""
        n = self.due = self.due - 1
        if n <= 0 or (conf is not None and conf < self.floor):
            self.select(model, feeds, outputs, classes, conf)

    def select(
        self,
        model: LoadedModel,
        feeds: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        classes: tuple[np.ndarray, np.ndarray] | None,
        conf: float | None,
    ) -> None:
        """An inference the check picked: its countdown ran out (the random or the drift rule is due) or its
        confidence is under ``floor``. The check itself is inline in the engine, not a call: a Python call
        per inference was ~1 % of a 12 µs model. It reads two attributes: ``due``, a countdown to the next
        inference a countdown rule is due on (a geometric gap for the random rate: the same law as a draw per
        inference, which a pause over the hourly cap or the CPU budget does not change: the gap is
        memoryless), and ``floor``; both say "never" while no policy is live or selection is paused.

        A selected inference is rare, so whatever it runs is cold in the caches: each Python function, type
        and numpy routine it touches costs memory latency, not instructions (in the inference loop the
        copies took 6-10 µs against 1-2 µs alone). So this is one function that appends a tuple of references:
        the feeds and outputs are not copied. The engine's callers hand them over (an API request's arrays
        are decoded per request, replayed inputs are views of self-test samples, outputs are the runtime's
        own copies), and the worker encodes them within ``BATCH_S``; their dicts are copied (the caller
        keeps those)."""
        t0 = time.perf_counter()
        live = self._hot
        if live is None:  # paused or off since the check (another thread's write may have been lost)
            self.due, self.floor = NEVER, -math.inf
            return
        reason = self._due(live) if self.due <= 0 else "low-confidence"
        if conf is not None and conf < live.floor:  # both at once, or no countdown rule due: the confidence
            reason = "low-confidence"
        if reason != "skip" and not self._over:
            cand = (model, dict(feeds), dict(outputs), classes, conf, reason, self.clock())
            pending = self._pending
            if model is live.model and len(pending) < live.queue_max:  # the common case
                pending.append(cand)
                if len(pending) == live.wake_at:  # the worker batches every BATCH_S, or now: half full
                    self._wake.set()
            else:
                self._select_other(live, cand)
        self._hot_cost += time.perf_counter() - t0 + UNTIMED_S  # for the CPU budget (``charge``)

    def _select_other(self, live: _Live, cand: _Pending) -> None:
        """A candidate of a model the policy has not seen yet (does it apply? what does one cost to hold?),
        one the policy skips, or one for a full queue (counted, never waited for)."""
        model = cand[0]
        if model is not live.model:
            m = model.manifest
            live.model = model
            live.queue_max = QUEUE_MAX if live.policy.applies_to(m.name, m.version) else 0
            if live.queue_max:  # the first candidate of this model tells what one costs to hold
                size = sum(np.asarray(a).nbytes for a in [*cand[1].values(), *cand[2].values()])  # (a list too)
                live.queue_max = max(2, min(QUEUE_MAX, QUEUE_BYTES // max(size, 1)))
                live.wake_at = live.queue_max // 2
        if not live.queue_max:
            return
        if len(self._pending) >= live.queue_max:
            self.counts["offered"] += 1  # (the worker counts the queued ones)
            self.counts["overflow"] += 1
            return
        self._pending.append(cand)

    def _random_gap(self, live: _Live) -> int:
        """Inferences until the next random capture: geometric with the policy's rate (never, at rate 0)."""
        if live.rate <= 0:
            return NEVER
        if live.rate >= 1:
            return 1
        if not live.gaps:  # drawn 256 at a time: a draw each was ~1 µs of the selected path
            live.gaps = np.minimum(self._np_rng.geometric(live.rate, 256), NEVER - 1).tolist()
        return int(live.gaps.pop())

    def _due(self, live: _Live) -> str:
        """The countdown ran out: which rule is due (random first), and the next countdown."""
        elapsed = min(self._to_random, self._to_drift)  # the countdown started at this and ran out
        self._to_random -= elapsed
        self._to_drift -= elapsed
        reason = "skip"  # a "never" ran out (a rule that is off): nothing is due
        if self._to_random <= 0:
            reason = "random" if live.rate > 0 else reason
            gaps = live.gaps
            self._to_random = gaps.pop() if gaps else self._random_gap(live)
        if self._to_drift <= 0:
            if reason == "skip" and live.drift_every:  # at most DRIFT_MAX_PER_S: a fast model's turns come often
                now = self.monotonic()
                since = now - self._last_drift
                if since < 1.0 / self.drift_max_per_s:  # too soon: turns come further apart (and cost less)
                    self._drift_gap = min(self._drift_gap * 2, 1 << 24)
                else:
                    reason, self._last_drift = "drift", now
                    if since > 2.0 / self.drift_max_per_s:  # ...and closer again when the model slows down
                        self._drift_gap = max(live.drift_every, self._drift_gap // 2)
            self._to_drift = self._drift_gap if live.drift_every else NEVER
        self.due = min(self._to_random, self._to_drift)
        return reason

    # --- the worker -------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Evaluate and store candidates in batches until ``stop``."""
        while not stop.is_set():
            self._wake.wait(BATCH_S)
            self._wake.clear()
            self.work()
        self.store.sync_if_due(force=True)

    def work(self) -> None:
        """One pass of the worker (every ``BATCH_S``, or when the queue is half full): the hourly cap, the
        waiting candidates as one batch, the store's flush when due (at most once a second), the CPU budget
        (which resumes a paused selection once it is back)."""
        self._refresh_budget()
        try:
            self.drain()
        except (ValueError, KeyError, TypeError) as exc:  # a model without usable references
            log.warning("capture: sample skipped: %s", exc)
        t0 = time.thread_time()
        self.store.sync_if_due()
        self.charge(time.thread_time() - t0)

    def drain(self) -> None:
        """Evaluate every waiting candidate now, as one batch (the worker; tests and benchmarks)."""
        batch: list[_Pending] = []
        pending = self._pending
        while pending:
            batch.append(pending.popleft())
        if batch:
            t0 = time.thread_time()  # this thread's CPU time: another thread's work is not capture's cost
            self.consider_many(batch)
            self.charge(time.thread_time() - t0)

    def _refresh_budget(self) -> None:
        live = self._live
        if live is None:
            return
        now = self.clock()
        while self._hour and self._hour[0] <= now - HOUR:
            self._hour.popleft()
        self.over_budget = len(self._hour) >= live.policy.max_per_hour
        if not live.policy.active(now):
            self._live = None
            self._sync_hot()

    def consider(self, cand: _Pending) -> bool:
        """Apply the worker's rules to one candidate; True if it was stored."""
        return self.consider_many([cand])[0]

    def consider_many(self, queued: list[_Pending]) -> list[bool]:
        """Apply the worker's rules to candidates in order and store the kept ones in one batch (quota and
        hourly cap counted as each is kept); per candidate, whether it was stored. One loop, no object per
        candidate: a batch is a few hundred samples a second at most, and each is a few µs of Python."""
        self.counts["offered"] += len(queued)
        live = self._live
        if live is None:
            return [False] * len(queued)
        policy, counts, per_class = live.policy, self.counts, self.per_class
        kept: list[tuple[int, int | None, tuple[str, bytes]]] = []
        self._refresh_budget()  # once a batch (a batch spans a fraction of a second of an hour's cap)
        now, hour, cap, quota = self.clock(), self._hour, policy.max_per_hour, policy.per_class_max
        threshold = policy.drift if policy.drift is not None else DRIFT_DEFAULT
        for i, q in enumerate(queued):
            model, feeds, _, classes, conf, reason, _ = q
            feeds = _model_inputs(model, feeds)
            top1 = None if classes is None or conf is None else int(classes[0].item(0))
            score = conf if conf is not None else 0.0
            if reason == "drift":
                score = drift_score(model, feeds)
                if score <= threshold:
                    counts["not_drift"] += 1
                    continue
            if top1 is not None and quota is not None and per_class.get(top1, 0) >= quota:
                counts["quota"] += 1
                continue
            if len(hour) >= cap:
                counts["rate_limited"] += 1
                continue
            kept.append((i, top1, self.encode(q, feeds, score, top1)))
            hour.append(now)
            if top1 is not None:
                per_class[top1] = per_class.get(top1, 0) + 1
        if len(hour) >= cap:
            self.over_budget = True
        return self._settle(kept, self.store.add_many([item for _, _, item in kept]) if kept else [], len(queued))

    def _settle(self, kept: list[tuple[int, int | None, Any]], stored: list[bool], n: int) -> list[bool]:
        """Count what the store took; give back the quota and cap places of what it did not."""
        out = [False] * n
        for (i, top1, _), ok in zip(kept, stored, strict=True):
            out[i] = ok
            if ok:
                self.counts["captured"] += 1
            else:  # not stored after all: its place in the quota and the hourly cap back
                self._hour.pop()  # (the cap counts stored captures; any entry of this batch will do)
                if top1 is not None:
                    self.per_class[top1] -= 1
        return out

    def encode(self, q: _Pending, feeds: _Arrays, score: float, top1: int | None = None) -> tuple[str, bytes]:
        """The sample as a file name (sorting oldest first) and its bytes (``npz.write_sample``'s format):
        ``q`` as queued, ``feeds`` its inputs by the model's names (``_model_inputs``)."""
        model, _, outputs, _, c, reason, ts = q
        self._seq += 1
        ts_ms = int(ts * 1000)
        sample_id = f"{ts_ms:013d}-{self._seq:08d}-{self._salt}"
        conf = "null" if c is None else _num(c)
        score_s = conf if score is c else _num(score)  # the score is the confidence but for drift
        rest, made = self._shared(model, feeds, outputs)
        meta = (  # by hand: json.dumps of these six fields was a quarter of encoding a sample
            f'{{"id": "{sample_id}", "ts": {ts_ms}, "reason": "{reason}", "score": {score_s}, '
            f'"top1": {"null" if top1 is None else top1}, "conf": {conf}{rest}'
        ).encode()
        return f"{sample_id}{SUFFIX}", write_sample(meta, [*feeds.values(), *outputs.values()], made)

    def _shared(self, model: LoadedModel, feeds: _Arrays, outputs: _Arrays) -> tuple[str, list[Frame]]:
        """What every sample of one model and policy shares, made once: the end of the metadata's JSON object
        (``, ...}``: encoding it per sample was a third of what storing a sample cost) and each array's
        ``.npy`` header with the shape and dtype it is for (``npz.frames``)."""
        policy = self._live.policy.id if self._live else None
        cached = self._meta_cache  # a model's candidates all name the same inputs and outputs
        if cached is None or cached[0] is not model or cached[1] != policy:
            m = model.manifest
            shared: dict[str, Any] = {
                **self.identity,
                "model": {"name": m.name, "version": m.version, "sha256": m.model.sha256},
                "inputs": list(feeds),
                "outputs": list(outputs),
                "policy": policy,
            }
            rest = ", " + json.dumps(shared, sort_keys=True)[1:]
            cached = self._meta_cache = (model, policy, rest, frames([*feeds.values(), *outputs.values()]))
        return cached[2], cached[3]


def _num(x: float) -> str:
    """A float as JSON, to 6 significant digits (NaN and infinities, which JSON lacks, as null: only they
    are not 0 less themselves). One format, not round() and repr(): half the time, twice a sample."""
    return f"{x:.6g}" if x - x == 0.0 else "null"


def _model_inputs(model: LoadedModel, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs by the model's input names: a quantized tensor in the float domain (dequantized: the
    exact values, which its scale and zero-point give back), any other as it is (an integer input that is
    not quantized, such as a sample rate or token ids, keeps its dtype)."""
    specs = model.manifest.inputs
    if len(feeds) == 1 == len(specs):  # the common case, first
        return {specs[0].name: _float(next(iter(feeds.values())), specs[0])}
    return {spec.name: _float(feeds[spec.name], spec) for spec in specs if spec.name in feeds}


def _float(value: np.ndarray, spec: TensorInfo) -> np.ndarray:
    a = np.asarray(value)
    if spec.quantization is not None and a.dtype.kind in "iu":
        return dequantize(a, spec)  # a new float32 array
    return a


def drift_score(model: LoadedModel, inputs: Mapping[str, np.ndarray]) -> float:
    """The largest PSI over the inputs of one sample's values against the bundle's reference histograms;
    0 without references."""
    refs = (model.drift_ref or {}).get("inputs", {})
    worst = 0.0
    for name, values in inputs.items():
        ref = refs.get(name)
        if ref is None:
            continue
        flat = np.asarray(values).ravel()
        if flat.size > DRIFT_VALUES:  # 4096 values estimate a 10-20 bin histogram well, at a fraction of the work
            flat = flat[:: flat.size // DRIFT_VALUES]
        hist = _Histogram.of(ref)
        hist.add(flat)
        worst = max(worst, psi(hist.expected, hist.counts))
    return worst
