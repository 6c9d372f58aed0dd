"""The scalable simulation mode: thousands of devices per process running the real agent code.

``fleetctl simulate`` runs each device as a full ``Agent`` with four threads, fine for a few hundred.
Here a device is a ``LeanDevice``: the agent's own ``AgentCore`` (command handling, events, info,
telemetry points) and MQTT ``Session`` (announce, spool, events, acknowledgements), and so the same
``Updater`` (download over HTTP, verification with the device's trust store and sequence check,
install into its A/B slots and ``state.json``, self-test, probation verdict, rollback), with its own
device home and its own MQTT connection and session. What changes is who runs that code:

- MQTT: every connection of a process is multiplexed on one thread (``device_agent.mqtt.mux``);
- work: each device has two strands on a shared thread pool, one for what the agent's loop does
  (commands, probation checks, telemetry) and one for what its deployment worker does;
- inference: real LiteRT / ONNX Runtime, but one runtime per model per process, shared by the
  devices of that process (a lock serializes it) instead of one interpreter per device, and so one
  self-test result per model per process (``SharedModel``). Every device still verifies every bundle
  it loads (signatures, hashes, sequence, requirements) itself;
- downloads: the same resumable, hash-checked ``Fetcher`` over a kept-alive connection per pool thread;
- the manifest summary of a slot in ``info`` is parsed once per bundle content per process;
- timers (telemetry, replayed inferences, probation checks) run on the mux thread's timer queue.

``fleet.sim.procs`` splits the devices over worker processes.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent import protocol as P
from device_agent.agent import Backoff
from device_agent.bundle import Bundle, TrustStore, read_bundle, verify_bundle
from device_agent.bundle.archive import Buffer
from device_agent.bundle.reader import DeviceCapabilities
from device_agent.config import AgentConfig
from device_agent.core import Action, AgentCore, AgentParts
from device_agent.errors import EdgefleetError
from device_agent.fetch import Fetcher
from device_agent.home import Home
from device_agent.model import LoadedModel
from device_agent.mqtt import Message
from device_agent.mqtt.mux import MqttMux, MuxClient
from device_agent.runtime import Runtime, available_runtimes, load_runtime
from device_agent.selftest import SelfTestResult
from device_agent.session import Session, mqtt_config
from device_agent.updater import MIN_GATE_SAMPLES
from fleet.sim.faults import FaultHooks, FaultPlan, SlowRuntime

log = logging.getLogger("fleetctl.simulate")
CONNECTS_PER_S = 800  # per process: paced so the broker's listen backlog never overflows


class SharedRuntime(Runtime):
    """One loaded model shared by the simulated devices of a process; ``run`` is serialized."""

    def __init__(self, inner: Runtime) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self._version, self._inputs, self._outputs = inner.version, inner.inputs, inner.outputs
        self._lock = threading.Lock()

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self.inner.run(feeds)


class SharedModel(LoadedModel):
    """A device's ``LoadedModel`` on a shared runtime: its self-test result is the process's for that model.

    The self-test runs the bundle's reference inputs through the runtime and compares with its reference
    outputs; on one shared runtime every device would compute the same numbers, so it runs once per
    model per process (the injected ``selftest`` fault still applies per device, in its ``LeanHooks``).
    """

    def __init__(self, bundle: Bundle, runtime: Runtime, slot: str, results: dict[str, SelfTestResult]) -> None:
        super().__init__(bundle, runtime, slot)
        self._results = results

    def selftest(self) -> SelfTestResult:
        key = f"{self.manifest.runtime.name}:{self.sha256}"
        result = self._results.get(key)
        if result is None:
            result = self._results[key] = super().selftest()
        return result


class SharedModels:
    """Per process: runtimes and self-test results by model sha256, and slot manifests by bundle content."""

    def __init__(self) -> None:
        self._selftests: dict[str, SelfTestResult] = {}
        self._runtimes: dict[tuple[str, str], SharedRuntime] = {}
        self._refs: dict[str, P.ModelRef | None] = {}
        self._lock = threading.Lock()
        self.runtimes = available_runtimes()

    def load(
        self,
        data: Buffer,
        trust: TrustStore,
        *,
        slot: str,
        threads: int = 1,
        highest_sequence: Mapping[str, int] | None = None,
        device: DeviceCapabilities | None = None,
    ) -> LoadedModel:
        """``LoadedModel.load`` with the runtime shared: the bundle is verified for this device every time.

        Raises: BundleError, RuntimeLoadError.
        """
        bundle = verify_bundle(data, trust, highest_sequence=highest_sequence, device=device)
        m = bundle.manifest
        key = (m.runtime.name, m.model.sha256)
        with self._lock:
            runtime = self._runtimes.get(key)
            if runtime is None:
                runtime = self._runtimes[key] = SharedRuntime(load_runtime(m.runtime.name, bundle.read(m.model.path)))
        return SharedModel(bundle, runtime, slot, self._selftests)

    def slot_ref(self, path: Path) -> P.ModelRef | None:
        try:
            data = path.read_bytes()
        except OSError:
            return None
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self._refs:
            try:
                m = read_bundle(data, check_hashes=False).manifest
                self._refs[digest] = P.ModelRef(m.name, m.version, m.sequence, m.model.sha256)
            except EdgefleetError:
                self._refs[digest] = None
        return self._refs[digest]


class Strand:
    """Runs submitted callables one at a time, in order, on a shared pool (a device's 'thread')."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool
        self._queue: deque[Callable[[], None]] = deque()
        self._lock = threading.Lock()
        self._running = False

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._queue.append(fn)
            if self._running:
                return
            self._running = True
        self._pool.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                fn = self._queue.popleft()
            try:
                fn()
            except Exception:  # as the agent's loop: log, carry on
                log.exception("simulated device step failed")


@dataclass
class WorkerContext:
    """What the devices of one process share: the mux thread, the pool, the model cache, a fetcher."""

    mux: MqttMux
    pool: ThreadPoolExecutor
    models: SharedModels
    fetcher: Fetcher
    replay_rate: float
    rng: random.Random


class LeanHooks(FaultHooks):
    """A lean device's injected faults, with its models loaded on the process's shared runtimes."""

    def __init__(self, plan: FaultPlan, models: SharedModels) -> None:
        super().__init__(plan)
        self.models = models

    def load(self, data: Buffer, trust: TrustStore, **options: Any) -> LoadedModel:
        return self.models.load(data, trust, **options)


class LeanDevice:
    """One device: an ``AgentCore`` and its MQTT ``Session``, driven by the shared mux thread and pool."""

    def __init__(self, home: Home, config: AgentConfig, ctx: WorkerContext, faults: FaultPlan) -> None:
        self.ctx = ctx
        parts = AgentParts(
            fetcher=ctx.fetcher,
            hooks=LeanHooks(faults, ctx.models),
            runtimes=lambda: ctx.models.runtimes,  # the process's runtime versions, looked up once
            slot_ref=ctx.models.slot_ref,  # parsed once per bundle content per process
        )
        self.core = AgentCore(home, config, parts)
        self.mqtt = MuxClient(
            ctx.mux,
            mqtt_config(config),
            on_connect=self._connected,
            on_disconnect=self._disconnected,
            on_message=self._message,
        )
        self.session = Session(self.core, self.mqtt)
        self.core.notify = self.session.flush_events
        self._loop, self._deploy = Strand(ctx.pool), Strand(ctx.pool)
        b = config.broker
        self._backoff = Backoff(b.reconnect_min_s, b.reconnect_max_s, ctx.rng)
        self.alive = False
        self.ever_connected = False
        self._offline_until = 0.0
        self._replayed = 0
        self._probation_queued = False

    # --- lifecycle -------------------------------------------------------------------------------

    def begin(self, connect_delay: float = 0.0) -> None:
        """Boot the model, resume an interrupted deployment, connect after ``connect_delay``, start timers.

        Raises: NoVerifiedModelError.
        """
        self.core.boot()
        self.alive = True
        if self.core.updater.state.pending is not None:
            self._deploy.submit(self._run_deployment)
        mux, rng = self.ctx.mux, self.ctx.rng
        mux.call_later(connect_delay, self._connect_now)
        mux.call_later(connect_delay + rng.uniform(0, self.core.telemetry_interval), self._telemetry_timer)
        if self.ctx.replay_rate > 0:
            mux.call_later(rng.uniform(0, 1 / self.ctx.replay_rate), self._replay_timer)

    def end(self, goodbye: bool = True) -> None:
        """Stop: publish ``offline`` and disconnect (``goodbye``), or drop the connection as a crash."""
        self.alive = False
        if not goodbye:
            self.mqtt.abort()
            return
        self.session.goodbye()

    def go_offline(self, seconds: float) -> None:
        self._offline_until = time.monotonic() + seconds
        self.mqtt.abort()

    # --- MQTT (mux thread: hand everything to a strand) ----------------------------------------

    def _connect_now(self) -> None:
        if self.alive:
            self.mqtt.connect(will=self.session.will())

    def _connected(self) -> None:
        self._backoff.reset()
        self._loop.submit(self._announce)

    def _announce(self) -> None:
        self.session.announce()
        self.session.flush_events()
        self.ever_connected = True

    def _disconnected(self, reason: str) -> None:
        if not self.alive:
            return
        delay = max(self._backoff.next_delay(), self._offline_until - time.monotonic())
        self.ctx.mux.call_later(delay, self._connect_now)

    def _message(self, msg: Message) -> None:
        self._loop.submit(lambda: self._command(msg))

    def _command(self, msg: Message) -> None:
        if self.session.on_message(msg) is Action.DEPLOY:
            self._deploy.submit(self._run_deployment)

    def _run_deployment(self) -> None:
        self.core.run_deployment()  # False: the simulator crashed this device and reboots it

    # --- timers (mux thread) ---------------------------------------------------------------------

    def _telemetry_timer(self) -> None:
        if not self.alive:
            return
        self._loop.submit(self.session.send_telemetry)
        self.ctx.mux.call_later(self.core.telemetry_interval, self._telemetry_timer)

    def _replay_timer(self) -> None:
        if not self.alive:
            return
        engine = self.core.engine
        if engine is not None and isinstance(engine.model.runtime, SlowRuntime):
            self._loop.submit(self._infer)  # the "slow" fault sleeps: not on the mux thread
        else:
            self._infer()
        self.ctx.mux.call_later(1 / self.ctx.replay_rate, self._replay_timer)

    def _infer(self) -> None:
        self.core.replay_one(self._replayed)
        self._replayed += 1

    def check_probation_soon(self) -> None:
        """Queue the agent loop's probation check, unless one is queued already or its verdict must be
        "wait" (neither the probation time nor the gates' sample count reached): with thousands of
        devices on probation at once, most checks would only cost a latency percentile each."""
        pr, engine = self.core.updater.state.probation, self.core.engine
        if not self.alive or pr is None or engine is None or self._probation_queued:
            return
        cfg = self.core.config.probation
        elapsed_s = time.time() - pr.started_ms / 1000
        inferences = engine.model_window.inferences
        if elapsed_s < cfg.seconds and inferences < min(MIN_GATE_SAMPLES, cfg.min_inferences):
            return
        self._probation_queued = True
        self._loop.submit(self._check_probation)

    def _check_probation(self) -> None:
        self._probation_queued = False
        self.core.updater.check_probation()
