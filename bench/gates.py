"""The rollout health gate on generated telemetry: false aborts on good releases, detection of regressions.

Drives the pure gates directly (no broker, no store): the old one (``fleet.rollout.health``: the mean of each
device's latest point per cohort, abort on the first breach) and the new one (``fleet.rollout.evidence``:
Mann-Whitney U over windows, effect sizes, consecutive failed evaluations), on the same generated rollouts.

One simulated rollout is one sku with 3 to 1,000 devices (log-uniform), 5 %, 25 % or 50 % of them updated
(at least one, at least one left as baseline), evaluated at every telemetry window (10 s, the agent's
default) for ``HORIZON`` windows after the updated devices settled. Field noise on every device, whatever
its release: a per-device latency offset (lognormal, sigma 0.05) and error base rate, window-to-window
jitter, stalls (heavy-tailed 5-200 ms p95 windows, 6 % of windows, and some devices stall far more often),
error bursts (2 % of windows, 10-50 % errors), and in a fifth of the rollouts input drift of the whole
world (every device's PSI rises by 0.2-0.6). Bad rollouts add one regression on the updated devices at the
gate's default effect size: latency x1.5, errors +5 pp, confidence -10 pp, drift +0.25 PSI.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from device_agent.protocol import DeploymentState
from fleet.rollout import evidence, health
from fleet.rollout.model import DeploymentView, DeviceView, Health, HealthGate

INTERVAL_S = 10.0  # the agent's default telemetry interval
INFERENCES = 50  # per window (5 inferences/s)
HORIZON = 18  # evaluations per rollout (3 minutes of baking)
GOOD, BAD = 500, 500  # rollouts per kind
REGRESSIONS: dict[str, dict[str, float]] = {
    "latency x1.5": {"slow": 1.5},
    "errors +5 pp": {"errors": 0.05},
    "confidence -10 pp": {"conf": -0.10},
    "drift +0.25 PSI": {"psi": 0.25},
}
CONSECUTIVE = (1, 2, 3)
GATE = HealthGate(settle_s=0.0, eval_interval_s=INTERVAL_S, consecutive=max(CONSECUTIVE))  # defaults otherwise
CLUSTERED = replace(GATE, clustered=True)  # --health-clustered
CLUSTERED_KINDS = ("good", "latency x1.5")


@dataclass(frozen=True)
class Device:
    """A device's lasting traits: latency offset, error base rate, confidence offset, how often it stalls."""

    latency: float
    errors: float
    conf: float
    stall: float


def _window(
    rng: random.Random, counts: np.random.Generator, dev: Device, t: float, bad: dict[str, float], world: float
) -> Health:
    p50 = 4.0 * dev.latency * rng.lognormvariate(0, 0.05) * bad.get("slow", 1.0)
    p95 = p50 * 1.5 * rng.lognormvariate(0, 0.1)
    if rng.random() < dev.stall:
        p95 = max(p95, 5.0 * rng.paretovariate(1.2))  # a stall: 5 ms and up, heavy-tailed
        p95 = min(p95, 200.0)
    rate = dev.errors + bad.get("errors", 0.0)
    errors = int(counts.binomial(INFERENCES, min(1.0, rate))) / INFERENCES
    if rng.random() < 0.02:
        errors = max(errors, rng.uniform(0.1, 0.5))  # an error burst (a flaky sensor)
    conf = min(1.0, 0.9 + dev.conf + rng.gauss(0, 0.02) + bad.get("conf", 0.0))
    psi = max(0.0, rng.gauss(0.05, 0.02) + world + bad.get("psi", 0.0))
    return Health(t, errors, p95, psi, conf, p50)


def _device(rng: random.Random) -> Device:
    stall = 0.3 if rng.random() < 0.05 else 0.06  # one in twenty devices stalls often (GC, thermal, cron)
    return Device(rng.lognormvariate(0, 0.05), rng.uniform(0.002, 0.01), rng.gauss(0, 0.01), stall)


def scenario(seed: int, bad: dict[str, float]) -> tuple[tuple[DeviceView, ...], dict[str, DeploymentView]]:
    """One sku's devices with ``HORIZON`` windows each (t = 10, 20, … s) and the updated ones' deployments."""
    rng, counts = random.Random(seed), np.random.default_rng(seed)
    n = max(3, min(1000, round(math.exp(rng.uniform(math.log(3), math.log(1000))))))
    updated = min(n - 1, max(1, round(n * rng.choice((0.05, 0.25, 0.5)))))
    world = rng.uniform(0.2, 0.6) if rng.random() < 0.2 else 0.0
    devices, deps = [], {}
    for i in range(n):
        dev, is_updated = _device(rng), i < updated
        windows = tuple(
            _window(rng, counts, dev, (k + 1) * INTERVAL_S, bad if is_updated else {}, world) for k in range(HORIZON)
        )
        dev_id = f"d{i}"
        devices.append(DeviceView(dev_id, "s", windows=windows, health=windows[-1]))
        if is_updated:
            deps[dev_id] = DeploymentView(dev_id, dev_id, DeploymentState.SUCCEEDED, 0, sent_at=0.0, finished_at=0.0)
    return tuple(devices), deps


def _at(devices: tuple[DeviceView, ...], k: int) -> tuple[DeviceView, ...]:
    """The devices as the old gate saw them at evaluation ``k``: the latest point only."""
    return tuple(replace(d, health=d.windows[k]) for d in devices)


def old_gate(devices: tuple[DeviceView, ...], deps: dict[str, DeploymentView]) -> int | None:
    """The evaluation (1-based) at which the old gate aborts, or None."""
    gate = HealthGate(settle_s=0.0, min_p95_delta_ms=2.0)  # the old gate's defaults
    for k in range(HORIZON):
        if health.health_problems(_at(devices, k), deps, gate):
            return k + 1
    return None


def new_gate(
    devices: tuple[DeviceView, ...], deps: dict[str, DeploymentView], gate: HealthGate = GATE
) -> tuple[dict[int, int | None], int]:
    """Per ``consecutive`` setting, the evaluation at which the new gate aborts (or None), and the first
    evaluation with the minimum samples."""
    aborts: dict[int, int | None] = dict.fromkeys(CONSECUTIVE)
    first = HORIZON + 1
    for k in range(1, HORIZON + 1):
        verdict = evidence.judge(devices, deps, gate, k * INTERVAL_S)
        if first > HORIZON and all(e.note != "too few windows" for e in verdict.evidence):
            first = k
        streak = max((e.streak for e in verdict.evidence), default=0)
        for n in CONSECUTIVE:
            if aborts[n] is None and streak >= n:
                aborts[n] = k
        if all(v is not None for v in aborts.values()):
            break
    return aborts, first


LABELS = {"old": "old (latest point, means)", "clustered": f"new, --health-clustered, consecutive={GATE.consecutive}"}


@dataclass
class Tally:
    runs: int = 0
    aborts: int = 0
    delays: list[int] | None = None  # evaluations from the minimum samples to the abort

    def add(self, abort: int | None, first: int) -> None:
        self.runs += 1
        if abort is not None:
            self.aborts += 1
            (self.delays if self.delays is not None else []).append(abort - first + 1)

    def rate(self) -> str:
        return f"{100 * self.aborts / max(1, self.runs):.1f} %"

    def times(self) -> str:
        if not self.delays:
            return "–"
        med = statistics.median(self.delays)
        p95 = sorted(self.delays)[min(len(self.delays) - 1, math.ceil(0.95 * len(self.delays)) - 1)]
        return f"{med:g} / {p95:g} ({med * INTERVAL_S:g} s / {p95 * INTERVAL_S:g} s)"


Outcome = tuple[int | None, dict[int, int | None], int, tuple[dict[int, int | None], int] | None]


def one(seed: int, bad: dict[str, float], clustered: bool) -> Outcome:
    """One generated rollout: the old gate's abort, the new gate's (per ``consecutive``) and its first evaluation
    with the minimum samples, and the same for ``--health-clustered`` when asked."""
    devices, deps = scenario(seed, bad)
    aborts, first = new_gate(devices, deps)
    return old_gate(devices, deps), aborts, first, new_gate(devices, deps, CLUSTERED) if clustered else None


def measure(kind: str, bad: dict[str, float], runs: int, seed0: int) -> dict[str, Tally]:
    """Old and new gate (per ``consecutive``) over ``runs`` generated rollouts of one kind, one process per core
    (each rollout is seeded, so the figures do not depend on the number of processes)."""
    clustered = kind in CLUSTERED_KINDS  # the option's trade-off: false aborts and the hard regression
    tallies = {
        "old": Tally(delays=[]),
        **{f"new-{n}": Tally(delays=[]) for n in CONSECUTIVE},
        **({"clustered": Tally(delays=[])} if clustered else {}),
    }
    seeds = range(seed0, seed0 + runs)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        outcomes = pool.map(one, seeds, [bad] * runs, [clustered] * runs, chunksize=10)
        for i, (old, aborts, first, with_deff) in enumerate(outcomes):
            if i % 100 == 0:
                print(f"{kind}: {i}/{runs}", file=sys.stderr, flush=True)
            tallies["old"].add(old, 1)
            for n in CONSECUTIVE:
                tallies[f"new-{n}"].add(aborts[n], first)
            if with_deff is not None:
                tallies["clustered"].add(with_deff[0][GATE.consecutive], with_deff[1])
    return tallies


def _rows(kinds: dict[str, dict[str, Tally]]) -> list[str]:
    rows = []
    for kind, tallies in kinds.items():
        for gate, t in tallies.items():
            label = LABELS.get(gate) or f"new, consecutive={gate.split('-')[1]}"
            rows.append(f"| {kind} | {label} | {t.runs} | {t.rate()} | {t.times()} |")
    return rows


def run(good: int = GOOD, bad: int = BAD, progress: Callable[[str], None] | None = None) -> str:
    kinds: dict[str, dict[str, Tally]] = {}
    kinds["good (noise only)"] = measure("good", {}, good, 0)
    for i, (kind, regression) in enumerate(REGRESSIONS.items()):
        if progress:
            progress(kind)
        kinds[kind] = measure(kind, regression, bad, 100_000 * (i + 1))
    return "\n".join(
        [
            "## Rollout health gate: false aborts and detection\n",
            f"{good} good rollouts with field noise and {bad} bad ones per regression kind (see bench/gates.py),"
            f" 3-1,000 devices per sku, evaluated every {INTERVAL_S:g} s window for {HORIZON} windows."
            " 'abort rate' is the false-abort rate on good rollouts and the detection rate on bad ones;"
            " time to detect is median / p95 in evaluations counted from the first evaluation with the"
            " minimum samples (1 = that one), and in seconds at the default telemetry interval;"
            " the old gate's are from its first evaluation. New gate: the defaults (alpha"
            f" {GATE.alpha:g}, at least {GATE.min_windows} windows per cohort, tolerance half the effect size,"
            " a quarter for errors). `--health-clustered` (the test widened by the design effect of windows"
            " clustered in devices) is measured on the good rollouts and on latency x1.5, its hardest case.\n",
            "| rollouts | gate | runs | abort rate | time to detect: evaluations (seconds) |",
            "|---|---|---|---|---|",
            *_rows(kinds),
        ]
    )
