"""Telemetry ingest: device topics in, latest state in memory (bounded), per-minute rollups in the store.

``Ingest.handle`` never raises: a bad topic, a malformed or oversized payload, a message for another
fleet or an event for an unknown deployment is counted under a reason and dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from device_agent import protocol as proto
from device_agent.errors import ProtocolError
from device_agent.mqtt import Message
from fleet.fastparse import TelemetryParser
from fleet.rollout.model import Health
from fleet.store import RollupRow, Store

log = logging.getLogger(__name__)
SHARE_GROUP = "edgefleet"


@dataclass(frozen=True)
class IngestConfig:
    fleet: str = "default"
    max_devices: int = 200_000  # devices whose latest state is kept in memory (least recently seen go)
    flush_interval_s: float = 2.0  # seconds between rollup flushes to the store
    windows_per_device: int = 60  # telemetry windows kept per device for the health gate (10 min at 10 s)


@dataclass
class DeviceState:
    """The latest of everything a device said, in memory."""

    status: str = "unknown"
    info: proto.Info | None = None
    telemetry: dict[str, float] = field(default_factory=dict)
    telemetry_at: float = 0.0  # receive time, epoch seconds
    last_seen: float = 0.0
    # the health gate's evidence, oldest first (bounded): (values, receive time), made ``Health`` only when
    # read (``Ingest.windows``), so the hot path appends a pair instead of building an object per point
    windows: deque[tuple[dict[str, float], float]] = field(default_factory=deque)


def subscriptions(fleet: str, protocol_version: str | None) -> list[tuple[str, int]]:
    """Telemetry goes through an MQTT 5 shared subscription when available, so several fleet-manager
    processes split it; status and info are retained (not delivered to shared subscriptions) and
    events are few, so those stay plain."""
    telemetry = proto.subscription(fleet, proto.TELEMETRY)
    if protocol_version == "5":
        telemetry = f"$share/{SHARE_GROUP}/{telemetry}"
    return [
        (proto.subscription(fleet, proto.STATUS), 1),
        (proto.subscription(fleet, proto.INFO), 1),
        (proto.subscription(fleet, proto.EVENTS), 1),
        (telemetry, 0),
    ]


def health_of(values: dict[str, float], ts: float) -> Health:
    """The model-health numbers the rollout gates compare, from one telemetry point."""
    inferences = values.get("inferences")
    errors = values.get("errors")
    rate = errors / max(inferences, 1.0) if inferences is not None and errors is not None else None
    return Health(
        ts, rate, values.get("lat_p95_ms"), values.get("psi_max"), values.get("conf_mean"), values.get("lat_p50_ms")
    )


class Ingest:
    """Consumes device messages for one fleet; thread-safe reads of the latest state."""

    def __init__(self, store: Store, config: IngestConfig | None = None, clock: Callable[[], float] = time.time):
        self.store = store
        self.config = config or IngestConfig()
        self.clock = clock
        self.received: Counter[str] = Counter()  # by topic kind
        self.dropped: Counter[str] = Counter()  # by reason
        self._latest: OrderedDict[str, DeviceState] = OrderedDict()
        self._pending: dict[tuple[str, int], list[float]] = {}
        self._fast = TelemetryParser(self.config.fleet)
        self._lock = threading.Lock()
        # without shared subscriptions (fleet/cluster.py): does this process store the device's telemetry?
        self.owns: Callable[[str], bool] | None = None
        self.elsewhere = 0  # telemetry points kept in memory but left to another manager to store

    # --- reading ------------------------------------------------------------------------------

    def latest(self, device: str) -> DeviceState | None:
        with self._lock:
            return self._latest.get(device)

    def health(self, device: str) -> Health | None:
        state = self.latest(device)
        if state is None or not state.telemetry:
            return None
        return health_of(state.telemetry, state.telemetry_at)

    def windows(self, device: str) -> tuple[Health, ...]:
        """The device's recent telemetry windows as health points, oldest first (the health gate's evidence)."""
        with self._lock:
            state = self._latest.get(device)
            raw = tuple(state.windows) if state is not None else ()
        return tuple(health_of(values, ts) for values, ts in raw)

    def __len__(self) -> int:
        return len(self._latest)

    # --- handling -----------------------------------------------------------------------------

    def handle(self, msg: Message) -> None:
        """Route one message; count and drop whatever is not protocol v1 for this fleet."""
        self.handle_many([msg])

    def handle_many(self, msgs: Sequence[Message]) -> None:
        """Route messages in order, their store writes in one transaction (one commit, not one per message).

        If the batch's transaction fails, each write is retried in its own, so one bad write costs
        only itself; in-memory state is updated once either way.
        """
        writes: list[Callable[[], None]] = []
        points: list[tuple[str, dict[str, float]]] = []
        fast = self._fast
        for msg in msgs:
            device = fast.device(msg.topic)
            if device is not None:  # the hot path: this fleet's telemetry (fleet/fastparse.py)
                try:
                    points.append((device, fast.values(msg.payload)))
                except ProtocolError as exc:
                    self.dropped[exc.code] += 1
                continue
            try:
                topic = proto.parse_topic(msg.topic)
                if topic.fleet != self.config.fleet:
                    self.dropped["other-fleet"] += 1
                    continue
                if topic.kind not in proto.DEVICE_TOPICS:
                    self.dropped["not-a-device-topic"] += 1
                    continue
                payload = proto.parse_payload(topic.kind, msg.payload)
            except ProtocolError as exc:
                self.dropped[exc.code] += 1
                continue
            self.received[topic.kind] += 1
            self._route(topic, payload, writes)
        if points:
            self._telemetry(points)
        if not writes:
            return
        try:
            with self.store.batch():
                for write in writes:
                    write()
        except SQLAlchemyError:
            for write in writes:
                self._write_alone(write)

    def _write_alone(self, write: Callable[[], None]) -> None:
        try:
            write()
        except SQLAlchemyError as exc:
            self.dropped["store-error"] += 1
            log.warning("store error while ingesting: %s", exc)

    def _state(self, device: str, now: float) -> DeviceState:
        with self._lock:
            state = self._latest.get(device)
            if state is None:
                state = self._latest[device] = DeviceState(windows=deque(maxlen=self.config.windows_per_device))
                while len(self._latest) > self.config.max_devices:
                    self._latest.popitem(last=False)
            else:
                self._latest.move_to_end(device)
            state.last_seen = now
            return state

    def _route(self, topic: proto.Topic, payload: object, writes: list[Callable[[], None]]) -> None:
        """Update the in-memory state now; append the store writes to ``writes``."""
        now = self.clock()
        state = self._state(topic.device, now)
        fleet, device = topic.fleet, topic.device
        if isinstance(payload, proto.Telemetry):
            state.telemetry, state.telemetry_at = payload.values, now
            with self._lock:
                state.windows.append((payload.values, now))
            if self.owns is None or self.owns(device):
                self._accumulate(device, payload.values, now)
            else:
                self.elsewhere += 1
        elif isinstance(payload, proto.Info):
            state.info = payload
            writes.append(lambda: self.store.devices.record_info(fleet, device, payload, now))
        elif isinstance(payload, proto.DeploymentEvent):
            writes.append(lambda: self._apply_event(device, payload, now))
        elif isinstance(payload, str):
            state.status = payload
            writes.append(lambda: self.store.devices.record_status(fleet, device, payload, now))

    def _telemetry(self, points: list[tuple[str, dict[str, float]]]) -> None:
        """A batch of telemetry points under one lock: latest state, health window, and the rollup of
        the devices whose telemetry this process stores."""
        now, owns, latest = self.clock(), self.owns, self._latest
        stored = 0
        with self._lock:
            for device, values in points:
                state = latest.get(device)
                if state is None:
                    state = latest[device] = DeviceState(windows=deque(maxlen=self.config.windows_per_device))
                    while len(latest) > self.config.max_devices:
                        latest.popitem(last=False)
                else:
                    latest.move_to_end(device)
                state.last_seen = state.telemetry_at = now
                state.telemetry = values
                state.windows.append((values, now))
                if owns is None or owns(device):
                    self._add_point(device, values, now)
                    stored += 1
        self.received[proto.TELEMETRY] += len(points)
        self.elsewhere += len(points) - stored

    def _apply_event(self, device: str, event: proto.DeploymentEvent, now: float) -> None:
        if not self.store.deployments.apply_event(device, event, now):
            self.dropped["unknown-or-stale-deployment"] += 1

    def _accumulate(self, device: str, v: dict[str, float], now: float) -> None:
        with self._lock:
            self._add_point(device, v, now)

    def _add_point(self, device: str, v: dict[str, float], now: float) -> None:
        """Add one point to the device's pending rollup of this minute (the caller holds the lock)."""
        key = (device, int(now // 60))
        get = v.get
        p95, psi = get("lat_p95_ms", 0.0), get("psi_max", 0.0)
        acc = self._pending.get(key)
        if acc is None:
            conf = get("conf_mean", 0.0)
            self._pending[key] = [1, get("inferences", 0.0), get("errors", 0.0), get("ips", 0.0), p95, p95, conf, psi]
            return
        acc[0] += 1
        acc[1] += get("inferences", 0.0)
        acc[2] += get("errors", 0.0)
        acc[3] += get("ips", 0.0)
        acc[4] += p95
        acc[6] += get("conf_mean", 0.0)
        acc[5] = max(acc[5], p95)
        acc[7] = max(acc[7], psi)

    def flush(self) -> int:
        """Write pending rollups and last-seen times to the store; returns the rollups written."""
        with self._lock:
            pending, self._pending = self._pending, {}
            seen = {dev: self._latest[dev].last_seen for dev, _ in pending if dev in self._latest}
        rollups = [
            RollupRow(dev, minute, int(a[0]), a[1], a[2], a[3], a[4], a[5], a[6], a[7])
            for (dev, minute), a in pending.items()
        ]
        try:
            self.store.rollups.add(rollups)
            self.store.devices.touch(self.config.fleet, seen)
        except SQLAlchemyError as exc:
            self.dropped["store-error"] += len(rollups)
            log.warning("could not flush %d rollups: %s", len(rollups), exc)
            return 0
        return len(rollups)
