"""Field data capture: the agent's throughput with capture on vs off, upload throughput, and a flood.

- Throughput: one ``InferenceEngine`` serving the bundle (with labels and drift references, so every rule
  is live), its capture sink attached or not in alternating blocks of the worker's period (0.2 s), 151
  rounds, the rules worker running alongside (it shares the CPU, as on a device), an on-block ending with the
  worker's pass; the ratio is the median of the per-round ratios.
  Rules: low-confidence below the 1st percentile of the bench inputs' confidence (live, rarely firing),
  drift (PSI > 0.5, scored on one inference in 50), random 1 %.
- Upload: a fleet manager (uvicorn, SQLite, real HTTP on loopback) receives batches of 32 samples.
- Flood: every inference selected (random 1.0, no hourly cap) into a 2 MiB store: the store's peak (and the
  bytes on disk, sampled by a second thread) against the bound, and the process's RSS before and after.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.agent import _median_rate, models
from device_agent.bundle import PrivateKey, TrustStore
from device_agent.capture.policy import CapturePolicy
from device_agent.capture.sampler import BATCH_S, CPU_SHARE, UNTIMED_S, Sampler
from device_agent.capture.store import CaptureStore
from device_agent.capture.upload import Uploader
from device_agent.engine import InferenceEngine
from device_agent.model import LoadedModel
from toolchain.npzio import save_npz
from toolchain.packaging import PackageOptions, package

IDENTITY = {"fleet": "bench", "device": "bench-1", "sku": "b"}


def _engine(path: Path, tmp: Path, key: PrivateKey) -> tuple[InferenceEngine, list[dict[str, np.ndarray]]]:
    """The model as a bundle with drift references from 64 inputs (random in [0, 1)), and labels if its
    one output is a [1, classes] score vector (a classifier)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    shape = tuple(it.get_input_details()[0]["shape"][1:])
    outs = [tuple(o["shape"]) for o in it.get_output_details()]
    x = np.random.default_rng(0).random((64, *shape)).astype(np.float32)
    (tmp / "calib.npz").write_bytes(save_npz({"x": x}))
    labels = None
    if len(outs) == 1 and len(outs[0]) == 2:
        labels = tmp / "labels.txt"
        labels.write_text("\n".join(f"c{i}" for i in range(outs[0][-1])) + "\n")
    opts = PackageOptions("bench", "1.0.0", 1, [key], labels=labels, calibration=tmp / "calib.npz")
    model = LoadedModel.load(package(path, opts), TrustStore.of([key.public_key]), slot="a", threads=1)
    name = model.manifest.inputs[0].name
    return InferenceEngine(model), [{name: x[i : i + 1]} for i in range(len(x))]


def _cycle(engine: InferenceEngine, feeds: list[dict[str, np.ndarray]]) -> Callable[[], object]:
    state = [0]

    def run() -> object:
        state[0] += 1
        return engine.predict(feeds[state[0] % len(feeds)])

    return run


def _rate(fn: Callable[[], object], n: int, after: Callable[[], object] | None = None) -> tuple[float, float]:
    """Inferences per second of wall time and per second of the process's CPU time (all threads: the rules
    worker's share counts against capture), over ``n`` calls and then ``after`` (the on-arm's drain)."""
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    if after is not None:
        after()
    t1, c1 = time.perf_counter(), time.process_time()
    return n / (t1 - t0), n / max(c1 - c0, 1e-9)


def _spread(ratios: list[float]) -> tuple[float, float, float]:
    """Median and interquartile range."""
    q1, med, q3 = statistics.quantiles(ratios, n=4)
    return med, q1, q3


@dataclass(frozen=True)
class Case:
    """A throughput measurement's policy: the random rule's ``rate``, the hourly cap, the low-confidence
    threshold's percentile (``low_pct``) and the sampler's CPU share."""

    rate: float = 0.01
    max_per_hour: int = 10**7
    low_pct: float | None = None
    cpu_share: float = CPU_SHARE
    block_s: float = BATCH_S


def _low_threshold(engine: InferenceEngine, feeds: list[dict[str, np.ndarray]], pct: float | None) -> float | None:
    """The low-confidence threshold at the ``pct`` percentile of the inputs' confidence, or just under the
    lowest (None: live, never firing); None for a model that is not a classifier (no such rule)."""
    classes = [engine.predict(f).classes for f in feeds]
    confs = [float(c[1][0]) for c in classes if c is not None]
    if not confs:
        return None
    return float(np.percentile(confs, pct)) if pct is not None else float(np.nextafter(min(confs), 0))


def throughput(
    name: str, path: Path, tmp: Path, key: PrivateKey, case: Case = Case(), rounds: int = 151
) -> tuple[str, float, float]:
    """On and off in alternating blocks of ``case.block_s`` (ABBA order) in one process, on the same engine,
    the same inputs in the same order (a block is whole cycles over them); the ratio is the median of per-round
    on/off ratios, of wall time and of process CPU time. An on-block ends with the worker's pass
    (``Sampler.work``), inside its timing. A block as long as the worker's period (``BATCH_S``) makes the
    field's batches: smaller ones cost more per sample (a batch's first sample finds the worker's code and
    the store's index evicted by the inferences before it). ``low_pct``: the low-confidence threshold at
    this percentile of the inputs' confidence; None: just under the lowest (live on every inference, never
    firing on these inputs), so that the random rule's rate is the capture rate."""
    engine, feeds = _engine(path, tmp, key)
    low = _low_threshold(engine, feeds, case.low_pct)
    sampler = Sampler(CaptureStore(tmp / "store", 20 << 20, 10_000), IDENTITY)
    policy = CapturePolicy("bench", low_confidence=low, drift=0.5, random=case.rate, max_per_hour=case.max_per_hour)
    sampler.cpu_share = case.cpu_share
    sampler.bind(engine)  # as the agent does: the engine has a sink only while selection is on
    sampler.set_policy(policy)
    stop = threading.Event()
    worker = threading.Thread(target=sampler.run, args=(stop,), daemon=True)
    worker.start()
    loop = _cycle(engine, feeds)
    speed = max(_median_rate(loop, 256) for _ in range(3))  # the best of three: a hiccup must not set n
    n = len(feeds) * max(1, round(case.block_s * speed / len(feeds)))
    wall: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    inferences_on, on_s = 0, 0.0
    paused0 = sampler.paused_total_s
    for r in range(rounds):
        for on in (True, False) if r % 2 else (False, True):
            sampler.set_policy(policy if on else None)  # as the agent does: no policy, no capture (nor budget)
            w, c = _rate(loop, n, sampler.work if on else None)
            wall[on].append(w)
            cpu[on].append(c)
            inferences_on += n if on else 0
            on_s += n / w if on else 0.0
    paused = (sampler.paused_total_s - paused0) / on_s
    sampler.set_policy(None)
    stop.set()
    worker.join()
    ratio, q1, q3 = _spread([a / b for a, b in zip(wall[True], wall[False], strict=True)])
    cratio, cq1, cq3 = _spread([a / b for a, b in zip(cpu[True], cpu[False], strict=True)])
    share = sampler.counts["captured"] / inferences_on
    row = (
        f"| {name} | {statistics.median(wall[False]):.0f} | {statistics.median(wall[True]):.0f} | **{ratio:.3f}** "
        f"({q1:.3f}–{q3:.3f}) | **{cratio:.3f}** ({cq1:.3f}–{cq3:.3f}) "
        f"| {share * 100:.2f} % | {paused * 100:.0f} % | {sampler.counts['offered']} / {sampler.counts['captured']} |"
    )
    return row, ratio, cratio


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def flood(path: Path, tmp: Path, key: PrivateKey, bound: int = 128 << 10, chunk: int = 2000) -> tuple[str, bool]:
    """Every inference selected into a store of ``bound`` bytes, in chunks until the store has dropped at
    least 200 samples for room (the evidence that the bound was reached again and again)."""
    engine, feeds = _engine(path, tmp, key)
    store = CaptureStore(tmp / "flood", bound, 10_000)
    sampler = Sampler(store, IDENTITY)
    sampler.cpu_share = math.inf  # no CPU budget: the store under the most pressure there can be
    sampler.set_policy(CapturePolicy("flood", random=1.0, max_per_hour=10**7, max_bytes=bound))
    stop = threading.Event()
    disk_peak = [0]

    def watch() -> None:
        while not stop.is_set():
            size = sum(p.stat().st_size for p in (tmp / "flood").glob("*") if p.exists())
            disk_peak[0] = max(disk_peak[0], size)
            time.sleep(0.01)

    threads = [threading.Thread(target=sampler.run, args=(stop,), daemon=True), threading.Thread(target=watch)]
    loop = _cycle(engine, feeds)
    for _ in range(500):
        loop()
    rss0 = _status_kb("VmRSS:")
    engine.capture = sampler
    for t in threads:
        t.start()
    inferences = 0
    while store.dropped < 200 and inferences < 2_000_000:
        for _ in range(chunk):
            loop()
        inferences += chunk
    engine.capture = None
    sampler.drain()
    stop.set()
    for t in threads:
        t.join()
    rss1 = _status_kb("VmRSS:")
    ok = store.peak_bytes <= bound and disk_peak[0] <= bound
    c = sampler.counts
    return (
        f"Flood (tiny-digits, every inference selected, store bound {bound >> 10} KiB, run until 200 drops): "
        f"{inferences} inferences, {c['captured']} stored, **{store.dropped} dropped oldest-first**, "
        f"{c['overflow']} not queued (the worker's queue was full: the hot path never waits); store peak "
        f"**{store.peak_bytes / 1024:.1f} KiB**, on disk at most {disk_peak[0] / 1024:.1f} KiB (bound "
        f"{'kept' if ok else 'EXCEEDED'}); RSS {rss0 / 1024:.1f} → {rss1 / 1024:.1f} MiB."
    ), ok


def upload(path: Path, tmp: Path, key: PrivateKey, samples: int = 1000) -> str:
    import uvicorn

    from device_agent import protocol as P
    from fleet.api import create_app
    from fleet.api_capture import capture_of
    from fleet.broker import free_port
    from fleet.capture.policy import upload_token
    from fleet.ingest import Ingest, IngestConfig
    from fleet.service import FleetService
    from fleet.store import Store

    engine, feeds = _engine(path, tmp, key)
    store = CaptureStore(tmp / "up", 1 << 30, samples)
    sampler = Sampler(store, IDENTITY)
    sampler.cpu_share = math.inf  # samples to upload, as fast as they come
    sampler.set_policy(CapturePolicy("up", random=1.0, max_per_hour=10**7))
    engine.capture = sampler
    loop = _cycle(engine, feeds)
    while len(store) < samples:
        loop()
        sampler.drain()
    db = Store.sqlite(tmp / "fleet.db")
    info = P.Info("0.1.0", "tflite", "2", "b", "x86_64", 1 << 30)
    db.devices.record_info("bench", "bench-1", info, time.time())
    service = FleetService(db, Ingest(db, IngestConfig(fleet="bench")), TrustStore.of([key.public_key]), tmp / "art")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service, {}), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    token = upload_token(capture_of(service).policies.key, "bench", "bench-1")
    up = Uploader(store, "bench/bench-1")
    size = store.size_bytes
    t0 = time.perf_counter()
    while len(store):
        result = up.upload_once(f"http://127.0.0.1:{port}/api/v1/capture/upload", token, 32)
        assert not result.error, result.error
    dt = time.perf_counter() - t0
    server.should_exit = True
    thread.join()
    return (
        f"Upload (tiny-digits samples, {size / samples / 1024:.1f} KiB each, batches of 32 over loopback HTTP to a "
        f"fleet manager on SQLite): {samples} samples in {dt:.2f} s → **{samples / dt:.0f} samples/s** "
        f"({size / dt / 2**20:.2f} MiB/s), each stored as a file and indexed, confirmed, deleted on the device."
    )


_INTRO = (
    "Agent throughput with capture on vs off (all rules live: low-confidence, drift PSI > 0.5 scored on "
    "one inference in 50, random 1 %; the rules worker running), 151 rounds of blocks as long as the "
    "worker's period (0.2 s), on and off alternating in ABBA order in one process on the same engine and the "
    "same inputs in the same order; an on-block ends with the worker's pass (what it selected as one batch, "
    "the flush if due, the CPU budget) inside its timing, as the worker does every 0.2 s or when its queue "
    "is half full, so the batches are the field's and no capture work spills into an off-block but a flush "
    "not yet due (at most one a second, on the worker's thread). Ratio = median of per-round ratios, IQR in "
    "brackets; *wall* is inferences per second, "
    "*CPU* per second of the process's CPU time (all threads: the worker's share counts against capture; "
    "other processes' load does not). *Captured* is the share of inferences stored; *offered / captured* "
    "the copies the hot path handed over and those the worker kept. The low-confidence threshold is just "
    "under the lowest confidence of the 64 inputs (evaluated on every inference, never firing), so the "
    "capture rate is the random rule's 1 %, except in the *p1* row (the threshold at the 1st percentile of "
    "the 64 inputs, i.e. one input in 64 below it: 1.6 % more); the face detector (MediaPipe's BlazeFace, "
    "from a PyPI package: not ours, and not a classifier) has no low-confidence rule. Every row lifts the "
    "hourly cap but the *default cap* row (120 per hour). *Paused* is the share of the on-time the CPU "
    f"budget held selection off (capture may take {CPU_SHARE * 100:g} % of a core: the selections' time on the "
    f"hot path, a fixed {UNTIMED_S * 1e6:g} µs per selection for what no timer sees (the inline checks before "
    "it, the caches it leaves cold) and the worker's CPU time are charged). The *flood* rows select every "
    "inference (random 1.0, cap lifted): an operator's mistaken policy, with and without the budget. "
    "Target ≥ 0.97 for the 1 % rows (issue 16's acceptance); the flood rows show what the budget holds:\n",
    "| model | off (inf/s) | on (inf/s) | **on / off, wall** (IQR) | **on / off, CPU** (IQR) | captured "
    "| paused | offered / captured |",
    "|---|---|---|---|---|---|---|---|",
)


def _throughput_rows(paths: dict[str, Path], tmp: Path, key: PrivateKey) -> list[str]:
    from tests.support.thirdparty import installed

    face = installed("face-detector")  # MediaPipe's BlazeFace: a third-party detector (no classifier output)
    tiny = paths["tiny-digits"]
    cases: list[tuple[str, Path, Case]] = [
        ("mobilenetv2-96", paths["mobilenetv2-96"], Case()),
        ("tiny-digits", tiny, Case()),
        ("tiny-digits, low-conf at p1", tiny, Case(low_pct=1)),
        ("face-detector (MediaPipe, third-party)", face, Case()),
        ("tiny-digits, default cap 120/h", tiny, Case(max_per_hour=120)),
        ("tiny-digits, flood (random 1.0)", tiny, Case(rate=1.0)),
        ("tiny-digits, flood (random 1.0, no CPU budget)", tiny, Case(rate=1.0, cpu_share=math.inf)),
        ("mobilenetv2-96, flood (random 1.0)", paths["mobilenetv2-96"], Case(rate=1.0)),
    ]
    rows = []
    for i, (label, path, case) in enumerate(cases):
        (tmp / f"case-{i}").mkdir()
        rows.append(throughput(label, path, tmp / f"case-{i}", key, case)[0])
    return rows


def run() -> str:
    key = PrivateKey.generate()
    paths = models()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = _throughput_rows(paths, tmp, key)
        (tmp / "flood").mkdir()
        flood_line, _ = flood(paths["tiny-digits"], tmp / "flood", key)
        (tmp / "upload").mkdir()
        upload_line = upload(paths["tiny-digits"], tmp / "upload", key)
    return "\n".join(
        [
            "## Field data capture\n",
            *_INTRO,
            *rows,
            "",
            "Where the time goes (tiny-digits, 12-22 µs per inference on this machine, whose speed varies by "
            "half from one minute to the next): the per-inference check is inline in the engine (a countdown "
            "and a compare of the top-1 confidence against a floor, no call; nothing fires while over the hourly "
            "cap or the CPU budget). A selected inference appends a tuple of references to the worker's queue "
            "(~1.3 µs alone); in the loop it takes ~5 µs more than another inference and slows the next two by "
            "~4 µs: a rare path is cold, and what it costs is memory latency per object it touches, which is "
            "why it copies nothing. The worker costs ~9-10 µs per stored sample alone in a batch of 128 "
            "(metadata and `.npy` framing, the append to the open segment: a batch is one `write`, a segment "
            "file per 1 MiB, a flush at most once a second), two to three times that in small batches between "
            "inferences. At an uncapped 1 % tiny-digits would store ~750-850 samples a second (a 20 MB store "
            "full in half a minute): the CPU budget thins that; the default hourly cap holds every model. A model "
            "of ~0.5 ms per inference (MobileNetV2-96) or ~1.4 ms (the face detector) stores ~20 or ~7 a second "
            "and is never held back.",
            "",
            flood_line,
            "",
            upload_line,
        ]
    )
