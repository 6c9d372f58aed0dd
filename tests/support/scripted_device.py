"""A protocol-level stand-in for the device agent: a scripted device that runs no model (named so: a fake).

``ScriptedDevice`` speaks MQTT protocol v1 like a device would: retained ``status`` (last will
``offline``) and ``info``, periodic ``telemetry``, and it answers ``cmd/deploy`` by really downloading
the artifact over HTTP (Range-resumable, sha256-checked), reading the bundle's manifest and publishing
``events/deployment`` — SUCCEEDED, or a failure injected per sku — and ``cmd/rollback`` by going back
to its previous model. It records every command it received, so tests can count duplicates. The
rollout tests use it where they need a failure per sku without a runtime; tests/test_fleet_real_agents.py
runs the same flows with real agents.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from device_agent import protocol as P
from device_agent.agent import Backoff
from device_agent.bundle import read_bundle
from device_agent.errors import TransportError
from device_agent.mqtt import MqttClient, MqttConfig, Will
from device_agent.protocol import DeploymentState as D

# fault(sku, release "name@version") -> None (succeed) or the terminal state and reason to report
Fault = Callable[[str, str], tuple[D, str] | None]


def no_fault(sku: str, release: str) -> tuple[D, str] | None:
    return None


@dataclass
class ScriptedDevice:
    broker_url: str
    fleet: str
    device_id: str
    sku: str
    model: P.ModelRef
    fault: Fault = no_fault
    step_delay: float = 0.0  # seconds between deployment steps (widens windows for crash tests)
    telemetry: dict[str, float] = field(default_factory=lambda: {"lat_p95_ms": 10.0, "conf_mean": 0.9})
    # telemetry_for(sku, "name@version") -> values the device reports while running that model
    telemetry_for: Callable[[str, str], dict[str, float]] | None = None
    telemetry_interval: float = 0.5  # seconds
    username: str | None = None
    password: str | None = None
    received: list[tuple[str, dict[str, object]]] = field(default_factory=list)  # (kind, payload)
    acted_on: list[str] = field(default_factory=list)  # deployment ids acted on, in order
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.previous: list[P.ModelRef] = []
        self.deployed: dict[str, P.ModelRef] = {}  # deployment id -> model it installed
        self._stop = threading.Event()
        self._seq = 0
        self._backoff = Backoff(0.2, 2.0)  # the agent's reconnect policy, with shorter steps for tests
        self.telemetry_sent = 0  # points handed to a connected client (QoS 0: the broker may still lose them)
        self.telemetry_unsent = 0  # points not sent: no connection
        self.reconnects: list[float] = []  # monotonic times of reconnections after a lost connection
        self.disconnected_at: float | None = None
        cfg = MqttConfig(
            url=self.broker_url,
            client_id=self.device_id,
            username=self.username,
            password=self.password,
            session_expiry_s=600,
        )
        self.client = MqttClient(cfg)
        self._thread = threading.Thread(target=self._loop, name=f"device-{self.device_id}", daemon=True)

    def topic(self, kind: str) -> str:
        return P.topic(self.fleet, self.device_id, kind)

    def start(self) -> ScriptedDevice:
        self.client.connect(will=Will(self.topic(P.STATUS), b"offline"))
        self.client.subscribe([(f"{P.PREFIX}/{self.fleet}/{self.device_id}/cmd/+", 1)])
        self.client.publish(self.topic(P.STATUS), b"online", qos=1, retain=True)
        self.publish_info()
        self.publish_telemetry()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(TransportError):  # a broker node just lost: the last will says it
            self.client.publish(self.topic(P.STATUS), b"offline", qos=1, retain=True)
        self.client.disconnect()

    def info(self) -> P.Info:
        return P.Info(
            "0.1.0",
            "tflite",
            "2.16.1",
            self.sku,
            "aarch64",
            512 << 20,
            model=self.model,
            active_slot="a",
            slots={"a": self.model, "b": None},
            tags=("lab",),
        )

    def publish_info(self) -> None:
        self._publish_reliably(self.topic(P.INFO), P.encode(self.info()), retain=True)

    def publish_telemetry(self) -> None:
        self._seq += 1
        extra = self.telemetry_for(self.sku, f"{self.model.name}@{self.model.version}") if self.telemetry_for else {}
        values = {
            "ts": int(time.time() * 1000),
            "seq": self._seq,
            "inferences": 100,
            "errors": 0,
            **self.telemetry,
            **extra,
        }
        try:
            self.client.publish(self.topic(P.TELEMETRY), P.encode(P.Telemetry(values)), qos=0)
        except TransportError:  # offline: QoS 0 telemetry is not kept (the agent's spool would keep it)
            self.telemetry_unsent += 1
            return
        self.telemetry_sent += 1

    def event(self, deployment_id: str, state: D, reason: str = "") -> None:
        ev = P.DeploymentEvent(deployment_id, state, int(time.time() * 1000), reason, version=self.model.version)
        self._publish_reliably(self.topic(P.EVENTS), P.encode(ev))

    def _publish_reliably(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """QoS 1 until the broker has it, reconnecting (with backoff) when the node went away."""
        while True:
            try:
                self.client.publish(topic, payload, qos=1, retain=retain)
                return
            except TransportError:
                if self._stop.is_set():
                    raise
                if not self.client.is_connected and self._reconnect():
                    continue
                self._stop.wait(self._backoff.next_delay())

    def _reconnect(self) -> bool:
        """As the agent's supervisor does: connect again (``MqttClient`` tries every node of a broker list,
        from the one it was on), subscribe, say ``online``; False (try later) while no node answers."""
        try:
            self.client.connect(will=Will(self.topic(P.STATUS), b"offline"))
            self.client.subscribe([(f"{P.PREFIX}/{self.fleet}/{self.device_id}/cmd/+", 1)])
            self.client.publish(self.topic(P.STATUS), b"online", qos=1, retain=True)
        except TransportError:
            return False
        self.reconnects.append(time.monotonic())
        return True

    def _loop(self) -> None:
        next_point = time.monotonic() + self.telemetry_interval
        while not self._stop.is_set():
            if not self.client.is_connected:
                self.disconnected_at = self.disconnected_at or time.monotonic()
                if not self._reconnect():
                    self._stop.wait(self._backoff.next_delay())
                    continue
                self.disconnected_at = None
                self._backoff.reset()
            if time.monotonic() >= next_point:
                self.publish_telemetry()
                next_point = time.monotonic() + self.telemetry_interval
            try:
                msg = self.client.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            kind = P.parse_topic(msg.topic).kind
            cmd = P.parse_command(kind, msg.payload)
            self.received.append((kind, cmd.to_dict()))
            if isinstance(cmd, P.DeployCommand) and cmd.deployment_id not in self.acted_on:
                self.acted_on.append(cmd.deployment_id)
                try:
                    self._deploy(cmd)
                except Exception as exc:  # a stand-in must never die silently: report it like a device would
                    self.event(
                        cmd.deployment_id,
                        D.FAILED,
                        "stand-in-error",
                    )
                    self.errors.append(repr(exc))
            elif isinstance(cmd, P.RollbackCommand):
                self._rollback(cmd)

    def _download(self, url: str, size: int) -> bytes:
        data = b""
        deadline = time.monotonic() + 30
        while len(data) < size:  # resume with Range after a failure (e.g. the fleet manager restarting)
            try:
                resp = httpx.get(url, headers={"Range": f"bytes={len(data)}-"} if data else {}, timeout=5)
                resp.raise_for_status()
                data += resp.content
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return data

    def _deploy(self, cmd: P.DeployCommand) -> None:
        self.event(cmd.deployment_id, D.DOWNLOADING)
        data = self._download(cmd.url, cmd.size)
        if hashlib.sha256(data).hexdigest() != cmd.sha256:
            self.event(cmd.deployment_id, D.REJECTED, "hash-mismatch")
            return
        m = read_bundle(data).manifest
        time.sleep(self.step_delay)
        if m.name == self.model.name and m.sequence <= self.model.sequence:
            self.event(cmd.deployment_id, D.REJECTED, "downgrade")
            return
        self.event(cmd.deployment_id, D.INSTALLING)
        time.sleep(self.step_delay)
        outcome = self.fault(self.sku, f"{m.name}@{m.version}")
        if outcome is not None:
            self.event(cmd.deployment_id, *outcome)
            return
        self.previous.append(self.model)
        self.model = P.ModelRef(m.name, m.version, m.sequence, m.model.sha256)
        self.deployed[cmd.deployment_id] = self.model
        self.publish_info()
        self.event(cmd.deployment_id, D.SUCCEEDED)
        self.publish_telemetry()

    def _rollback(self, cmd: P.RollbackCommand) -> None:
        if cmd.deployment_id in self.deployed and self.previous and self.model == self.deployed[cmd.deployment_id]:
            self.model = self.previous.pop()
            self.publish_info()
            self.event(cmd.deployment_id, D.ROLLED_BACK, "rollback-command")


def start_fleet(
    broker_url: str, fleet: str, skus: dict[str, int], model: P.ModelRef, **kw: object
) -> list[ScriptedDevice]:
    """``{"pi4": 10, ...}`` → started devices ``pi4-0`` … each on ``model``."""
    devices = [
        ScriptedDevice(broker_url, fleet, f"{sku}-{i}", sku, model, **kw)  # type: ignore[arg-type]
        for sku, n in skus.items()
        for i in range(n)
    ]
    for d in devices:
        d.start()
    return devices
