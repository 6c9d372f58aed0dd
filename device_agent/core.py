"""The agent's decisions, free of threads and sockets: commands in, actions and reports out.

``AgentCore`` owns the updater and the inference engine. It acts on a parsed command and says what
the caller must do next (``Action``), queues deployment events, and builds the telemetry point,
``info`` and the status document. Who runs it (the threaded supervisor in ``device_agent.agent``, or
another driver) and how its reports travel is the caller's business.
"""

from __future__ import annotations

import collections
import enum
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_agent import __version__
from device_agent import protocol as P
from device_agent.bundle import read_bundle
from device_agent.bundle.reader import DeviceCapabilities
from device_agent.config import AgentConfig
from device_agent.engine import InferenceEngine
from device_agent.errors import EdgefleetError, TrustError
from device_agent.fetch import Fetcher, HttpFetcher
from device_agent.fsutil import map_file
from device_agent.home import Home
from device_agent.hooks import NO_HOOKS, Halt, UpdateHooks
from device_agent.hostmetrics import CpuMeter, rss_mb, temperature_c, total_ram_bytes
from device_agent.runtime import available_runtimes
from device_agent.stats import Snapshot
from device_agent.status import status_document
from device_agent.trust_store import DeviceTrust
from device_agent.updater import Updater

if TYPE_CHECKING:
    from device_agent.capture.control import Capture

log = logging.getLogger("edge-agent")
MAX_PENDING_EVENTS = 1000
INFO_STATES = (P.DeploymentState.PROBATION, P.DeploymentState.SUCCEEDED, P.DeploymentState.ROLLED_BACK)


def slot_ref(path: Path) -> P.ModelRef | None:
    """The model summary of the bundle in a slot file (hashes unchecked), or None."""
    if not path.exists():
        return None
    try:
        m = read_bundle(map_file(path), check_hashes=False).manifest  # mapped: only the manifest is read
    except (EdgefleetError, OSError, ValueError):
        return None
    return P.ModelRef(m.name, m.version, m.sequence, m.model.sha256)


@dataclass
class AgentParts:
    """What a caller may replace in the agent; each default is the real thing."""

    fetcher: Fetcher | None = None  # None: an HttpFetcher configured from [download]
    hooks: UpdateHooks = NO_HOOKS
    runtimes: Callable[[], dict[str, str]] = available_runtimes  # runtime name -> version
    slot_ref: Callable[[Path], P.ModelRef | None] = slot_ref


class Action(enum.Enum):
    """What the driver must do after a command."""

    NONE = "none"
    DEPLOY = "deploy"  # run the pending deployment (``AgentCore.run_deployment``) off the command path
    PUBLISH_INFO = "publish-info"


@dataclass
class AgentCore:
    """One device's decisions. ``notify`` is called after every queued event (the driver flushes)."""

    home: Home
    config: AgentConfig
    parts: AgentParts = field(default_factory=AgentParts)
    notify: Callable[[], None] = lambda: None

    def __post_init__(self) -> None:
        self.fetcher = self.parts.fetcher or HttpFetcher(self.config.download)
        self.trust = DeviceTrust.load(self.home, self.config.trust.threshold)
        self.updater = Updater(
            self.home,
            self.config,
            self.trust.store,
            self.fetcher,
            self.emit,
            self.capabilities,
            hooks=self.parts.hooks,
        )
        self.updater.installed_trust = self.trust.installed_store()
        self.events: collections.deque[P.DeploymentEvent] = collections.deque(maxlen=MAX_PENDING_EVENTS)
        self.telemetry_interval = self.config.telemetry.interval_s
        self.engine: InferenceEngine | None = None
        self.info_dirty = False  # info changed since it was last published
        self._seq = 0
        self._cpu = CpuMeter()
        self.capture: Capture | None = None  # set by the driver that runs capture's threads

    def topic(self, kind: str) -> str:
        return P.topic(self.config.device.fleet, self.config.device.id, kind)

    def boot(self) -> None:
        """Load the active model (settling an interrupted probation) into a new inference engine.

        Raises:
            NoVerifiedModelError
        """
        self.engine = InferenceEngine(self.updater.boot())
        self.updater.engine = self.engine

    def active_engine(self) -> InferenceEngine:
        if self.engine is None:
            raise RuntimeError("boot() first")
        return self.engine

    # --- commands and deployments ------------------------------------------------------------------

    def handle_command(self, cmd: P.Command) -> Action:
        """Act on a command once per request id; returns what the driver must do next."""
        with self.updater.lock:
            if cmd.request_id in self.updater.state.requests:
                return Action.NONE
            self.updater.state.remember_request(cmd.request_id)
        action = Action.NONE
        if isinstance(cmd, P.DeployCommand):
            action = Action.DEPLOY if self.updater.receive(cmd) else Action.NONE
        elif isinstance(cmd, P.RollbackCommand):
            action = self._rollback(cmd)
        elif isinstance(cmd, P.PingCommand):
            action = Action.PUBLISH_INFO
        elif isinstance(cmd, P.TrustCommand):
            action = self._update_trust(cmd)
        elif isinstance(cmd, P.CaptureCommand):
            action = self._capture(cmd)
        elif isinstance(cmd, P.ConfigCommand):
            interval = cmd.settings.get("telemetry_interval_s")
            if isinstance(interval, int | float) and not isinstance(interval, bool) and 0.1 <= interval <= 86400:
                self.telemetry_interval = float(interval)
        with self.updater.lock:
            self.updater.save_quietly()  # a full disk must not stop the agent answering commands
        return action

    def _capture(self, cmd: P.CaptureCommand) -> Action:
        if self.capture is None:
            log.warning("capture policy %s ignored: this agent runs without capture", cmd.request_id)
        else:
            self.capture.apply(cmd.policy)
        return Action.NONE

    def _update_trust(self, cmd: P.TrustCommand) -> Action:
        """Apply newer trust metadata; from then on bundles verify against its release keys."""
        try:
            meta = self.trust.apply(cmd.chain)
        except TrustError as exc:
            log.warning("trust update %s refused: %s [%s]", cmd.request_id, exc, self.trust.refused)
            return Action.PUBLISH_INFO
        with self.updater.lock:
            self.updater.trust, self.updater.installed_trust = self.trust.store, self.trust.installed_store()
        log.info("trust metadata is now version %d", meta.version)
        return Action.PUBLISH_INFO

    def _rollback(self, cmd: P.RollbackCommand) -> Action:
        if self.updater.cancel(cmd.deployment_id):
            return Action.DEPLOY  # the deployment stops at its next step and reports it
        if not self.updater.rollback("requested", cmd.reason or "cmd/rollback", cmd.deployment_id):
            now_ms = int(time.time() * 1000)
            detail = "nothing to roll back to"
            self.emit(
                P.DeploymentEvent(
                    cmd.deployment_id or "manual", P.DeploymentState.FAILED, now_ms, "no-previous", detail
                )
            )
        return Action.NONE

    def run_deployment(self) -> bool:
        """Carry the pending deployment as far as it goes; False when a hook halted it (``Halt``)."""
        try:
            self.updater.run_pending()
        except (EdgefleetError, OSError) as exc:  # the updater ends deployments itself; this is the last guard
            log.error("deployment failed: %s", exc)
        except Halt:
            return False
        return True

    def manual_rollback(self) -> bool:
        return self.updater.rollback("requested", "local rollback")

    def emit(self, event: P.DeploymentEvent) -> None:
        """Queue a deployment event for the driver to publish (and tell it)."""
        log.info("deployment %s: %s %s %s", event.deployment_id, event.state.value, event.reason, event.detail)
        self.events.append(event)
        if event.state in INFO_STATES:
            self.info_dirty = True
        self.notify()

    # --- inference -----------------------------------------------------------------------------------

    def replay_one(self, i: int) -> None:
        """One inference on self-test sample ``i`` (modulo their count) of the active model."""
        engine = self.active_engine()
        try:
            inputs, _ = engine.model.selftest_samples()
            n = len(next(iter(inputs.values())))
            feeds = {k: v[i % n : i % n + 1] for k, v in inputs.items()}
            engine.predict(self.parts.hooks.replay_inputs(engine.model, feeds))
        except EdgefleetError:
            pass

    # --- reports -------------------------------------------------------------------------------------

    def capabilities(self) -> DeviceCapabilities:
        d = self.config.device
        return DeviceCapabilities(
            runtimes=self.parts.runtimes(),
            agent_version=__version__,
            arch=d.arch,
            ram_bytes=d.ram_bytes or total_ram_bytes() or None,
            flash_free_bytes=shutil.disk_usage(self.home.root).free,
        )

    def info(self) -> P.Info:
        model = self.active_engine().model
        m, d = model.manifest, self.config.device
        return P.Info(
            agent_version=__version__,
            runtime=m.runtime.name,
            runtime_version=model.runtime.version,
            sku=d.sku,
            arch=d.arch,
            ram_bytes=d.ram_bytes or total_ram_bytes(),
            model=P.ModelRef(m.name, m.version, m.sequence, m.model.sha256),
            active_slot=self.updater.state.active,
            slots={s: self.parts.slot_ref(self.home.slot(s)) for s in ("a", "b")},
            flash_free_bytes=shutil.disk_usage(self.home.root).free,
            tags=d.tags,
            trust_version=self.trust.version,
            trust_expired=self.trust.expired(),
            trust_refused=self.trust.refused or None,
        )

    def status(self) -> dict[str, Any]:
        doc = status_document(self.home, self.updater.state, self.active_engine().model.runtime.version)
        if self.capture is not None:
            doc["capture"] = self.capture.status()
        return doc

    def telemetry_point(self) -> P.Telemetry:
        engine = self.active_engine()
        snap: Snapshot = engine.roll_window().snapshot(time.monotonic())
        self._seq += 1
        values: dict[str, float] = {
            "ts": int(time.time() * 1000),
            "seq": self._seq,
            "inferences": snap.inferences,
            "ips": round(snap.inferences / snap.seconds, 3),
            "errors": snap.errors,
            "cpu_pct": self._cpu.percent(),
            "rss_mb": rss_mb(),
            "disk_free_mb": round(shutil.disk_usage(self.home.root).free / 2**20, 1),
            "model_sequence": engine.model.manifest.sequence,
            "trust_expired": int(self.trust.expired()),
        }
        if self.trust.version is not None:
            values["trust_version"] = self.trust.version
        for key, pct in (("lat_p50_ms", "p50"), ("lat_p95_ms", "p95"), ("lat_p99_ms", "p99")):
            if pct in snap.lat_ms:
                values[key] = round(snap.lat_ms[pct], 4)
        if (t := temperature_c()) is not None:
            values["temp_c"] = t
        if snap.conf_mean is not None:
            values["conf_mean"] = round(snap.conf_mean, 5)
        psi_max = engine.model_window.snapshot(time.monotonic()).psi_max  # since the model became active
        if psi_max is not None:
            values["psi_max"] = round(psi_max, 5)
        if self.capture is not None:
            c = self.capture
            values |= {"capture_on": int(c.live), "capture_stored": len(c.store), "capture_dropped": c.store.dropped}
            values["capture_uploaded"] = c.uploader.uploaded
        for cls, count in sorted(snap.classes.items())[:64]:
            values[f"class_{cls}"] = count
        return P.Telemetry(values)
