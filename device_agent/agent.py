"""The agent's supervisor loop: MQTT session, commands, telemetry, spool, probation, local API.

One loop owns the visible policy (reconnect with backoff and jitter, telemetry cadence, probation
checks); a worker thread runs deployments so telemetry keeps flowing meanwhile; paho's thread
only enqueues. ``stop()`` is warm (finish the current step); the CLI exits cold on a second signal.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import queue
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agent import __version__
from device_agent import protocol as P
from device_agent.api import LocalApi
from device_agent.bundle import TrustStore, read_bundle
from device_agent.bundle.reader import DeviceCapabilities
from device_agent.config import AgentConfig
from device_agent.engine import InferenceEngine
from device_agent.errors import EdgefleetError, ProtocolError, TransportError
from device_agent.fetch import FetchConfig, Fetcher, HttpFetcher
from device_agent.fsutil import atomic_write
from device_agent.home import DeviceState, Home
from device_agent.model import LoadedModel
from device_agent.mqtt import MqttClient, MqttConfig, Will
from device_agent.runtime import available_runtimes
from device_agent.spool import Spool
from device_agent.stats import Snapshot
from device_agent.updater import DeviceCrashed, FaultPlan, Updater

log = logging.getLogger("edge-agent")
MAX_PENDING_EVENTS = 1000
HA_METRICS = {
    "ips": "inferences/s",
    "lat_p95_ms": "ms",
    "errors": None,
    "conf_mean": None,
    "psi_max": None,
    "cpu_pct": "%",
    "rss_mb": "MB",
}


@dataclass
class Backoff:
    """Reconnect delays: doubling from ``min_s`` up to ``max_s``, each drawn from the upper half of
    the current step (jitter, so a fleet that lost its broker does not reconnect in lockstep)."""

    min_s: float
    max_s: float
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._step = self.min_s

    def next_delay(self) -> float:
        delay = self.rng.uniform(self._step / 2, self._step)
        self._step = min(self._step * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._step = self.min_s


@dataclass
class _Cpu:
    wall: float = field(default_factory=time.monotonic)
    cpu: float = field(default_factory=lambda: sum(os.times()[:2]))

    def percent(self) -> float:
        wall, cpu = time.monotonic(), sum(os.times()[:2])
        pct = 100.0 * (cpu - self.cpu) / max(wall - self.wall, 1e-6)
        self.wall, self.cpu = wall, cpu
        return round(pct, 2)


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 2)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 2)


def temperature_c() -> float | None:
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp")):
        try:
            return round(int(zone.read_text().strip()) / 1000, 1)
        except (OSError, ValueError):
            continue
    return None


def total_ram_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        return 0


class Agent:
    def __init__(
        self,
        home: Home,
        config: AgentConfig,
        *,
        fetcher: Fetcher | None = None,
        faults: FaultPlan | None = None,
        api: bool = True,
        step_delay_s: float = 0.0,
        loader: Callable[..., LoadedModel] = LoadedModel.load,
    ) -> None:
        self.home, self.config = home, config
        d = config.download
        self.fetcher = fetcher or HttpFetcher(FetchConfig(d.timeout_s, d.retries, d.backoff_s, d.max_bytes))
        self.trust = TrustStore.from_paths([home.trust], config.trust.threshold)
        self.updater = Updater(
            home, config, self.trust, self.fetcher, self._emit, self.capabilities, faults, step_delay_s=step_delay_s,
            loader=loader,
        )  # fmt: skip
        self.events: collections.deque[P.DeploymentEvent] = collections.deque(maxlen=MAX_PENDING_EVENTS)
        self.spool = Spool(home.spool, config.telemetry.spool_max_points)
        self.telemetry_interval = config.telemetry.interval_s
        self.mqtt = MqttClient(self._mqtt_config())
        self.stop_event = threading.Event()
        self._work = threading.Event()
        self._seq = 0
        self._cpu = _Cpu()
        self._want_api = api
        self.api: LocalApi | None = None
        self.engine: InferenceEngine | None = None
        self._threads: list[threading.Thread] = []
        self._info_dirty = False
        self._flush_lock = threading.Lock()
        self._offline_until = 0.0  # simulations: stay away from the broker until then
        self._drop_connection = threading.Event()

    def _mqtt_config(self) -> MqttConfig:
        b = self.config.broker
        return MqttConfig(
            url=b.url,
            client_id=f"{self.config.device.fleet}.{self.config.device.id}",
            username=b.username or None,
            password=b.password or None,
            cafile=b.cafile or None,
            certfile=b.certfile or None,
            keyfile=b.keyfile or None,
            keepalive=b.keepalive_s,
            protocol=b.protocol,
            manual_ack=True,  # a command is acknowledged only once state.json records it
        )

    def topic(self, kind: str) -> str:
        return P.topic(self.config.device.fleet, self.config.device.id, kind)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Boot the model and start the worker, replay and API threads (not the MQTT loop).

        Raises:
            NoVerifiedModelError, ConfigError
        """
        self.boot()
        self._spawn("deploy-worker", self._deploy_worker)
        if self.config.replay.rate > 0:
            self._spawn("replay", self._replay)
        if self._want_api:
            host, _, port = self.config.api.listen.rpartition(":")
            self.api = LocalApi(self._engine, self.status, self.manual_rollback, host or "127.0.0.1", int(port or 0))
            self.api.start()
        atomic_write(
            self.home.run_file, json.dumps({"pid": os.getpid(), "api": self.api.url if self.api else None}).encode()
        )
        if self.updater.state.pending is not None:
            self._work.set()  # a deployment interrupted by a restart: resume it

    def boot(self) -> None:
        """Load the active model (settling an interrupted probation) into a new inference engine.

        Raises:
            NoVerifiedModelError
        """
        model = self.updater.boot()
        self.engine = InferenceEngine(model)
        self.updater.engine = self.engine
        if self.updater.state.probation is not None:
            key = f"{model.manifest.name}@{model.manifest.version}"
            self.engine.extra_latency_s = self.updater.faults.slow_s.get(key, 0.0)

    def _spawn(self, name: str, target: Any) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _engine(self) -> InferenceEngine:
        assert self.engine is not None, "start() first"
        return self.engine

    def run(self) -> None:
        """The supervisor loop, until ``stop()``."""
        b = self.config.broker
        reconnect = Backoff(b.reconnect_min_s, b.reconnect_max_s)
        next_connect = 0.0
        next_telemetry = time.monotonic() + self.telemetry_interval
        next_probation = 0.0
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if self._drop_connection.is_set():
                    self._drop_connection.clear()
                    self.mqtt.abort()
                if not self.mqtt.is_connected and now >= next_connect and now >= self._offline_until:
                    if self._connect():
                        reconnect.reset()
                    else:
                        next_connect = now + reconnect.next_delay()
                if now >= next_probation:
                    self.updater.check_probation()
                    next_probation = now + 0.5
                if now >= next_telemetry:
                    self.send_telemetry()
                    next_telemetry = now + self.telemetry_interval
                self._flush_events()
                self._drain_commands(timeout=0.1)
        finally:
            self.teardown()

    def stop(self) -> None:
        self.stop_event.set()
        self._work.set()

    def go_offline(self, seconds: float) -> None:
        """Lose the broker connection abruptly and stay offline for ``seconds`` (simulated outages)."""
        self._offline_until = time.monotonic() + seconds
        self._drop_connection.set()

    def crash(self) -> None:
        """Stop at once as a dying device would: the connection drops without a goodbye (the broker
        publishes the last will) and nothing is flushed. Used by simulations."""
        self._drop_connection.set()
        self.stop()

    def teardown(self) -> None:
        for t in self._threads:
            t.join(timeout=30)
        if self._drop_connection.is_set():  # crash(): no goodbye, the broker publishes the will
            self.mqtt.abort()
        if self.mqtt.is_connected:
            with contextlib.suppress(TransportError):
                self.mqtt.publish(self.topic(P.STATUS), b"offline", qos=1, retain=True, timeout=2)
        self.mqtt.disconnect()
        if self.api is not None:
            self.api.stop()
        self.home.run_file.unlink(missing_ok=True)

    # --- MQTT ----------------------------------------------------------------------------------

    def _connect(self) -> bool:
        try:
            self.mqtt.connect(will=Will(self.topic(P.STATUS), b"offline", qos=1, retain=True))
            self.announce()
            return True
        except TransportError as exc:
            log.warning("broker: %s", exc)
            self.mqtt.disconnect()
            return False

    def announce(self) -> None:
        """On a new connection: subscribe to our commands, say online, publish info (and discovery),
        replay the telemetry spooled while offline. Raises: TransportError."""
        cmd = f"{P.PREFIX}/{self.config.device.fleet}/{self.config.device.id}/cmd/+"
        self.mqtt.subscribe([(cmd, 1)])
        self.mqtt.publish(self.topic(P.STATUS), b"online", qos=1, retain=True)
        self.publish_info()
        if self.config.telemetry.home_assistant:
            self._publish_discovery()
        sent = self.spool.replay(lambda payload: self.mqtt.publish(self.topic(P.TELEMETRY), payload, qos=1))
        if sent:
            log.info("replayed %d spooled telemetry points", sent)

    def publish_info(self) -> None:
        if self.mqtt.is_connected:
            try:
                self.mqtt.publish(self.topic(P.INFO), P.encode(self.info()), qos=1, retain=True)
            except TransportError as exc:
                log.warning("info not published: %s", exc)

    def _emit(self, event: P.DeploymentEvent) -> None:
        log.info("deployment %s: %s %s %s", event.deployment_id, event.state.value, event.reason, event.detail)
        self.events.append(event)
        if event.state in (P.DeploymentState.PROBATION, P.DeploymentState.SUCCEEDED, P.DeploymentState.ROLLED_BACK):
            self._info_dirty = True
        self._flush_events()  # at once, from this thread: the fleet manager reacts to events

    def _flush_events(self) -> None:
        if not self._flush_lock.acquire(blocking=False):
            return  # another thread is flushing; it will take this event too
        try:
            self._flush_pending()
        finally:
            self._flush_lock.release()

    def _flush_pending(self) -> None:
        while self.events and self.mqtt.is_connected:
            event = self.events[0]
            try:
                self.mqtt.publish(self.topic(P.EVENTS), P.encode(event), qos=1, timeout=5)
            except TransportError:
                return
            self.events.popleft()
        if self._info_dirty and self.mqtt.is_connected:
            self._info_dirty = False
            self.publish_info()

    def _drain_commands(self, timeout: float) -> None:
        try:
            msg = self.mqtt.messages.get(timeout=timeout)
        except queue.Empty:
            return
        try:
            kind = P.parse_topic(msg.topic).kind
            self.handle_command(P.parse_command(kind, msg.payload))
        except ProtocolError as exc:
            log.warning("ignored malformed command on %s: %s", msg.topic, exc)
        self.mqtt.ack(msg)

    def handle_command(self, cmd: P.Command) -> None:
        """Act on a command once per request id."""
        with self.updater.lock:
            if cmd.request_id in self.updater.state.requests:
                return
            self.updater.state.remember_request(cmd.request_id)
        if isinstance(cmd, P.DeployCommand):
            if self.updater.receive(cmd):
                self._work.set()
        elif isinstance(cmd, P.RollbackCommand):
            if self.updater.cancel(cmd.deployment_id):
                self._work.set()  # the worker stops the deployment at its next step and reports it
            elif not self.updater.rollback("requested", cmd.reason or "cmd/rollback", cmd.deployment_id):
                self._emit(
                    P.DeploymentEvent(
                        cmd.deployment_id or "manual",
                        P.DeploymentState.FAILED,
                        int(time.time() * 1000),
                        "no-previous",
                        "nothing to roll back to",
                    )
                )
        elif isinstance(cmd, P.PingCommand):
            self.publish_info()
        elif isinstance(cmd, P.ConfigCommand):
            interval = cmd.settings.get("telemetry_interval_s")
            if isinstance(interval, int | float) and not isinstance(interval, bool) and 0.1 <= interval <= 86400:
                self.telemetry_interval = float(interval)
        with self.updater.lock:
            self.updater.save()

    def manual_rollback(self) -> bool:
        return self.updater.rollback("requested", "local rollback")

    # --- workers ---------------------------------------------------------------------------------

    def _deploy_worker(self) -> None:
        while not self.stop_event.is_set():
            self._work.wait()
            self._work.clear()
            if self.stop_event.is_set():
                return
            try:
                self.updater.run_pending()
            except EdgefleetError as exc:
                log.error("deployment failed: %s", exc)
            except DeviceCrashed:
                return  # a simulated device died here; its simulator reboots it

    def _replay(self) -> None:
        """Feed the active model its own self-test inputs at ``replay.rate`` per second (demos, simulation)."""
        period = 1.0 / self.config.replay.rate
        i = 0
        while not self.stop_event.wait(period):
            self.replay_one(i)
            i += 1

    def replay_one(self, i: int) -> None:
        """One inference on self-test sample ``i`` (modulo their count) of the active model."""
        engine = self._engine()
        try:
            inputs, _ = engine.model.selftest_samples()
            n = len(next(iter(inputs.values())))
            engine.predict({k: v[i % n : i % n + 1] for k, v in inputs.items()})
        except EdgefleetError:
            pass

    # --- reports ---------------------------------------------------------------------------------

    def capabilities(self) -> DeviceCapabilities:
        d = self.config.device
        return DeviceCapabilities(
            runtimes=self._runtimes(),
            agent_version=__version__,
            arch=d.arch,
            ram_bytes=d.ram_bytes or total_ram_bytes() or None,
            flash_free_bytes=shutil.disk_usage(self.home.root).free,
        )

    def _runtimes(self) -> dict[str, str]:
        return available_runtimes()

    def _slot_ref(self, slot: str) -> P.ModelRef | None:
        path = self.home.slot(slot)
        if not path.exists():
            return None
        try:
            m = read_bundle(path.read_bytes(), check_hashes=False).manifest
        except EdgefleetError:
            return None
        return P.ModelRef(m.name, m.version, m.sequence, m.model.sha256)

    def info(self) -> P.Info:
        model = self._engine().model
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
            slots={s: self._slot_ref(s) for s in ("a", "b")},
            flash_free_bytes=shutil.disk_usage(self.home.root).free,
            tags=d.tags,
        )

    def status(self) -> dict[str, Any]:
        return status_document(self.home, self.updater.state, self._engine().model.runtime.version) | {
            "running": True,
            "broker_connected": self.mqtt.is_connected,
            "spooled": len(self.spool),
        }

    def telemetry_point(self) -> P.Telemetry:
        engine = self._engine()
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
        }
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
        for cls, count in sorted(snap.classes.items())[:64]:
            values[f"class_{cls}"] = count
        return P.Telemetry(values)

    def send_telemetry(self) -> None:
        payload = P.encode(self.telemetry_point())
        if self.mqtt.is_connected:
            try:
                self.mqtt.publish(self.topic(P.TELEMETRY), payload, qos=0)
                return
            except TransportError:
                pass
        self.spool.append(payload)

    def _publish_discovery(self) -> None:
        d = self.config.device
        for metric, unit in HA_METRICS.items():
            doc = {
                "name": f"{d.id} {metric}",
                "unique_id": f"edgefleet_{d.fleet}_{d.id}_{metric}",
                "state_topic": self.topic(P.TELEMETRY),
                "value_template": f"{{{{ value_json.{metric} }}}}",
                "availability_topic": self.topic(P.STATUS),
                "device": {
                    "identifiers": [f"edgefleet_{d.fleet}_{d.id}"],
                    "name": d.id,
                    "model": d.sku,
                    "manufacturer": "edgefleet",
                },
            } | ({"unit_of_measurement": unit} if unit else {})
            topic = f"homeassistant/sensor/edgefleet_{d.fleet}_{d.id}/{metric}/config"
            self.mqtt.publish(topic, json.dumps(doc).encode(), qos=1, retain=True)


def status_document(home: Home, state: DeviceState, runtime_version: str | None = None) -> dict[str, Any]:
    """What ``edge-agent status --json`` prints, whether or not the agent runs."""
    doc: dict[str, Any] = {
        "active_slot": state.active,
        "previous_slot": state.previous,
        "state": "probation" if state.probation else ("deploying" if state.pending else "committed"),
        "committed_sequences": state.committed,
        "probation": None,
        "pending": state.pending.deployment_id if state.pending else None,
        "model": None,
    }
    if state.probation:
        pr = state.probation
        doc["probation"] = {
            "deployment_id": pr.deployment_id,
            "version": pr.version,
            "started_ms": pr.started_ms,
            "boots": pr.boots,
        }
    try:
        m = read_bundle(home.slot(state.active).read_bytes()).manifest
        doc["model"] = {
            "name": m.name,
            "version": m.version,
            "sequence": m.sequence,
            "sha256": m.model.sha256,
            "runtime": m.runtime.name,
        }
        if runtime_version:
            doc["model"]["runtime_version"] = runtime_version
    except (OSError, EdgefleetError) as exc:
        doc["error"] = str(exc)
    return doc
