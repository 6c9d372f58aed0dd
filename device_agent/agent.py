"""The agent's supervisor: threads, the MQTT connection and its reconnection, shutdown.

One loop owns the visible policy (reconnect with backoff and jitter, telemetry cadence, probation
checks); a worker thread runs deployments so telemetry keeps flowing meanwhile; paho's thread
only enqueues. The decisions themselves are the ``AgentCore``'s. ``stop()`` is warm (finish the
current step); the CLI exits cold on a second signal.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from device_agent import protocol as P
from device_agent.api import ApiHandlers, ApiSettings, LocalApi
from device_agent.api_security import ApiLimits, load_or_create_token
from device_agent.capture.control import Capture
from device_agent.config import AgentConfig
from device_agent.core import Action, AgentCore, AgentParts
from device_agent.engine import InferenceEngine
from device_agent.errors import TransportError
from device_agent.fsutil import atomic_write
from device_agent.home import Home
from device_agent.mqtt import MqttClient
from device_agent.session import Session, mqtt_config
from device_agent.spool import Spool
from device_agent.updater import Updater

log = logging.getLogger("edge-agent")
PROBATION_CHECK_S = 0.5  # seconds between probation checks
COMMAND_WAIT_S = 0.1  # the loop's longest wait for a command


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


class Agent:
    """Runs an ``AgentCore`` with its own threads: the loop (``run``), a deployment worker, a replay
    source and the local API. ``mqtt`` and ``backoff`` may be injected (defaults: from agent.toml)."""

    def __init__(
        self,
        home: Home,
        config: AgentConfig,
        *,
        parts: AgentParts | None = None,
        api: bool = True,
        mqtt: MqttClient | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.home, self.config = home, config
        self.core = AgentCore(home, config, parts or AgentParts(), notify=self._flush_events)
        d = config.device
        self.capture = Capture(home.root / "capture", {"fleet": d.fleet, "device": d.id, "sku": d.sku})
        self.core.capture = self.capture
        self.mqtt = mqtt or MqttClient(mqtt_config(config))
        self.session = Session(self.core, self.mqtt)
        b = config.broker
        self.backoff = backoff or Backoff(b.reconnect_min_s, b.reconnect_max_s)
        self.stop_event = threading.Event()
        self._work = threading.Event()
        self._want_api = api
        self.api: LocalApi | None = None
        self._threads: list[threading.Thread] = []

    @property
    def engine(self) -> InferenceEngine | None:
        return self.core.engine

    @property
    def updater(self) -> Updater:
        return self.core.updater

    @property
    def spool(self) -> Spool:
        return self.session.spool

    def info(self) -> P.Info:
        return self.core.info()

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Boot the model and start the worker, replay and API threads (not the MQTT loop).

        Raises:
            NoVerifiedModelError, ConfigError
        """
        self.core.boot()
        self.capture.attach(self.core.active_engine())
        self._spawn("deploy-worker", self._deploy_worker)
        for name, target in self.capture.threads(self.stop_event):
            self._spawn(name, target)
        if self.config.replay.rate > 0:
            self._spawn("replay", self._replay)
        if self._want_api:
            core = self.core
            self.api = LocalApi(
                ApiHandlers(core.active_engine, self.status, core.manual_rollback), self._api_settings()
            )
            self.api.start()
        run_info = {"pid": os.getpid(), "api": self.api.url if self.api else None}
        try:
            atomic_write(self.home.run_file, json.dumps(run_info).encode())
        except OSError as exc:  # a full disk: serve anyway (`edge-agent status` cannot find the API meanwhile)
            log.error("cannot write %s: %s", self.home.run_file, exc.strerror)
        if self.updater.state.pending is not None:
            self._work.set()  # a deployment interrupted by a restart: resume it

    def _api_settings(self) -> ApiSettings:
        a = self.config.api
        limits = ApiLimits(a.max_body_bytes, a.max_json_bytes, a.max_decoded_bytes, a.max_elements)
        listen, token = a.listen, ""
        if listen == "unix":
            listen = str(self.home.api_socket)
        elif listen.startswith("unix:"):
            listen = listen[len("unix:") :]
        else:
            token = load_or_create_token(self.home.api_token)
        return ApiSettings(listen, token, limits, a.read_timeout_s, a.max_connections)

    def _spawn(self, name: str, target: Any) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def run(self) -> None:
        """The supervisor loop, until ``stop()``."""
        next_connect = 0.0
        next_telemetry = time.monotonic() + self.core.telemetry_interval
        next_probation = 0.0
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if not self.mqtt.is_connected and now >= next_connect:
                    if self._connect():
                        self.backoff.reset()
                    else:
                        next_connect = now + self.backoff.next_delay()
                if now >= next_probation:
                    next_probation = now + PROBATION_CHECK_S
                    self._guarded(self.updater.check_probation)
                if now >= next_telemetry:
                    next_telemetry = now + self.core.telemetry_interval
                    self._guarded(self.session.send_telemetry)
                self._flush_events()
                self._guarded(lambda: self._next_command(COMMAND_WAIT_S))
        finally:
            self.teardown()

    @staticmethod
    def _guarded(step: Callable[[], object]) -> None:
        """Run one step of the loop; an I/O error (a full or failing disk) is logged, never fatal: the
        components end their own work with a reason, this is the last line of defence."""
        try:
            step()
        except OSError as exc:
            log.error("%s: %s", getattr(step, "__name__", "step"), exc)

    def stop(self) -> None:
        self.stop_event.set()
        self._work.set()

    def teardown(self) -> None:
        for t in self._threads:
            t.join(timeout=30)
        self.session.goodbye()
        if self.api is not None:
            self.api.stop()
        self.home.run_file.unlink(missing_ok=True)

    # --- MQTT ----------------------------------------------------------------------------------

    def _connect(self) -> bool:
        try:
            self.mqtt.connect(will=self.session.will())
            self.session.announce()
            return True
        except TransportError as exc:
            log.warning("broker: %s", exc)
            self.mqtt.disconnect()
            return False

    def _flush_events(self) -> None:
        self.session.flush_events()

    def _next_command(self, timeout: float) -> None:
        try:
            msg = self.mqtt.messages.get(timeout=timeout)
        except queue.Empty:
            return
        if self.session.on_message(msg) is Action.DEPLOY:
            self._work.set()

    # --- workers ---------------------------------------------------------------------------------

    def _deploy_worker(self) -> None:
        while not self.stop_event.is_set():
            self._work.wait()
            self._work.clear()
            if self.stop_event.is_set() or not self.core.run_deployment():
                return  # stopping, or a hook halted the worker (state.json resumes it at the next start)

    def _replay(self) -> None:
        """Feed the active model its own self-test inputs at ``replay.rate`` per second (demos, load tests)."""
        period = 1.0 / self.config.replay.rate
        i = 0
        while not self.stop_event.wait(period):
            self.core.replay_one(i)
            i += 1

    # --- reports ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.core.status() | {
            "running": True,
            "broker_connected": self.mqtt.is_connected,
            "spooled": len(self.spool),
        }
