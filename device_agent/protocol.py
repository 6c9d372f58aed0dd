"""MQTT wire protocol, version 1: topics, payload dataclasses, and strict bounded parsing.

Topic layout: ``edgefleet/v1/{fleet}/{device}/{kind}``. Every parser takes ``bytes`` and returns a
typed object or raises ``ProtocolError`` (``TopicError``, ``PayloadError``, ``PayloadTooLargeError``);
nothing else escapes, whatever the input (a property test holds us to that).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from device_agent._json import Fields, JsonObject, canonical_json, drop_none, loads_strict
from device_agent.capture.policy import CapturePolicy
from device_agent.errors import PayloadError, PayloadTooLargeError, ProtocolError, TopicError

PREFIX = "edgefleet/v1"
ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
METRIC_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")

STATUS, INFO, TELEMETRY, EVENTS = "status", "info", "telemetry", "events/deployment"
CMD_DEPLOY, CMD_ROLLBACK, CMD_PING, CMD_CONFIG = "cmd/deploy", "cmd/rollback", "cmd/ping", "cmd/config"
CMD_TRUST, CMD_CAPTURE = "cmd/trust", "cmd/capture"
DEVICE_TOPICS = (STATUS, INFO, TELEMETRY, EVENTS)
COMMAND_TOPICS = (CMD_DEPLOY, CMD_ROLLBACK, CMD_PING, CMD_CONFIG, CMD_TRUST, CMD_CAPTURE)
KINDS = DEVICE_TOPICS + COMMAND_TOPICS

MAX_PAYLOAD = {  # bytes
    STATUS: 16,
    INFO: 16 * 1024,
    TELEMETRY: 8 * 1024,
    EVENTS: 8 * 1024,
    CMD_DEPLOY: 8 * 1024,
    CMD_ROLLBACK: 4 * 1024,
    CMD_PING: 1024,
    CMD_CONFIG: 8 * 1024,
    CMD_TRUST: 256 * 1024,  # a chain of trust documents (device_agent.bundle.trust: at most 64 KiB each)
    CMD_CAPTURE: 8 * 1024,
}
MAX_TRUST_CHAIN = 32  # versions in one cmd/trust
MAX_TELEMETRY_KEYS = 128

# Keys every dashboard can count on (where the device knows them). Others must still be numeric.
TELEMETRY_KEYS = (
    "ts",
    "seq",
    "inferences",
    "ips",
    "lat_p50_ms",
    "lat_p95_ms",
    "lat_p99_ms",
    "errors",
    "cpu_pct",
    "rss_mb",
    "disk_free_mb",
    "temp_c",
    "conf_mean",
    "psi_max",
)


class DeploymentState(enum.StrEnum):
    """A deployment's state on one device (DESIGN.md)."""

    QUEUED = "QUEUED"
    DOWNLOADING = "DOWNLOADING"
    VERIFYING = "VERIFYING"
    INSTALLING = "INSTALLING"
    SELFTEST = "SELFTEST"
    PROBATION = "PROBATION"
    SUCCEEDED = "SUCCEEDED"
    REJECTED = "REJECTED"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"

    @property
    def terminal(self) -> bool:
        return self in (self.SUCCEEDED, self.REJECTED, self.FAILED, self.ROLLED_BACK)


# --- topics ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    fleet: str
    device: str
    kind: str

    def __str__(self) -> str:
        return topic(self.fleet, self.device, self.kind)


def _check_id(value: str, what: str) -> str:
    if not ID_RE.fullmatch(value):
        raise TopicError(f"{what} {value[:80]!r} must match {ID_RE.pattern}")
    return value


def topic(fleet: str, device: str, kind: str) -> str:
    """Build ``edgefleet/v1/{fleet}/{device}/{kind}``.

    Raises:
        TopicError: a bad id or unknown kind.
    """
    if kind not in KINDS:
        raise TopicError(f"unknown topic kind {kind!r}")
    return f"{PREFIX}/{_check_id(fleet, 'fleet')}/{_check_id(device, 'device')}/{kind}"


def subscription(fleet: str, kind: str, device: str = "+") -> str:
    """A subscription filter, e.g. every device's telemetry in a fleet: ``subscription(f, TELEMETRY)``."""
    if kind not in KINDS and kind != "#":
        raise TopicError(f"unknown topic kind {kind!r}")
    if device != "+":
        _check_id(device, "device")
    return f"{PREFIX}/{_check_id(fleet, 'fleet')}/{device}/{kind}"


def command_subscription(fleet: str, device: str) -> str:
    """The filter a device subscribes to for its own commands: ``edgefleet/v1/{fleet}/{device}/cmd/+``."""
    return f"{PREFIX}/{_check_id(fleet, 'fleet')}/{_check_id(device, 'device')}/cmd/+"


def ha_discovery_topic(fleet: str, device: str, metric: str) -> str:
    """Home Assistant's MQTT discovery topic for one sensor (metric) of a device."""
    return f"homeassistant/sensor/edgefleet_{_check_id(fleet, 'fleet')}_{_check_id(device, 'device')}/{metric}/config"


def parse_topic(name: str) -> Topic:
    """Raises: TopicError if ``name`` is not a protocol-v1 topic."""
    if len(name) > 256:
        raise TopicError("topic is longer than 256 characters")
    parts = name.split("/")
    if len(parts) < 5 or "/".join(parts[:2]) != PREFIX:
        raise TopicError(f"topic {name[:120]!r} is not under {PREFIX}/")
    kind = "/".join(parts[4:])
    if kind not in KINDS:
        raise TopicError(f"topic {name[:120]!r} has unknown kind {kind[:40]!r}")
    return Topic(_check_id(parts[2], "fleet"), _check_id(parts[3], "device"), kind)


# --- payloads ----------------------------------------------------------------------------------


def _load(kind: str, data: bytes) -> Fields:
    if len(data) > MAX_PAYLOAD[kind]:
        raise PayloadTooLargeError(f"{kind} payload is {len(data)} bytes, limit {MAX_PAYLOAD[kind]}")
    return Fields(loads_strict(data, max_bytes=MAX_PAYLOAD[kind], error=PayloadError, what=kind), kind, PayloadError)


def parse_status(data: bytes) -> str:
    """``online`` or ``offline``. Raises: PayloadError."""
    if len(data) > MAX_PAYLOAD[STATUS]:
        raise PayloadTooLargeError("status payload is too long")
    if data not in (b"online", b"offline"):
        raise PayloadError(f"status must be 'online' or 'offline', not {data[:16]!r}")
    return data.decode()


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    sequence: int
    sha256: str

    def to_dict(self) -> JsonObject:
        return {"name": self.name, "version": self.version, "sequence": self.sequence, "sha256": self.sha256}

    @classmethod
    def parse(cls, f: Fields) -> ModelRef:
        return cls(
            name=f.string("name", max_len=64),
            version=f.string("version", max_len=128),
            sequence=f.integer("sequence", lo=0),
            sha256=f.string("sha256", pattern=SHA256_RE),
        )


@dataclass(frozen=True)
class Info:
    """Retained device description: who it is, what it runs, what it could run."""

    agent_version: str
    runtime: str
    runtime_version: str
    sku: str
    arch: str
    ram_bytes: int
    model: ModelRef | None = None
    active_slot: str | None = None
    slots: dict[str, ModelRef | None] = field(default_factory=dict)
    flash_free_bytes: int | None = None
    tags: tuple[str, ...] = ()
    trust_version: int | None = None  # None: the device trusts plain keys (no trust metadata)
    trust_expired: bool | None = None
    trust_refused: str | None = None  # reason code of the last refused cmd/trust

    def to_dict(self) -> JsonObject:
        return drop_none(
            {
                "agent_version": self.agent_version,
                "runtime": self.runtime,
                "runtime_version": self.runtime_version,
                "hardware": {"sku": self.sku, "arch": self.arch, "ram_bytes": self.ram_bytes},
                "model": self.model.to_dict() if self.model else None,
                "active_slot": self.active_slot,
                "slots": {k: (v.to_dict() if v else None) for k, v in sorted(self.slots.items())},
                "flash_free_bytes": self.flash_free_bytes,
                "tags": list(self.tags),
                "trust_version": self.trust_version,
                "trust_expired": self.trust_expired,
                "trust_refused": self.trust_refused,
            }
        )

    @classmethod
    def parse(cls, data: bytes) -> Info:
        """Raises: PayloadError (or PayloadTooLargeError)."""
        f = _load(INFO, data)
        hw = f.child("hardware")
        model = f.opt_child("model")
        slots: dict[str, ModelRef | None] = {}
        slot_obj = f.raw_obj("slots", max_keys=2)
        for name, value in slot_obj.items():
            if name not in ("a", "b"):
                f.fail("slots", f"has unknown slot {name[:8]!r}")
            slots[name] = None if value is None else ModelRef.parse(Fields(value, f"info.slots.{name}", PayloadError))
        active = f.opt_string("active_slot", max_len=1)
        if active is not None and active not in ("a", "b"):
            f.fail("active_slot", "must be 'a' or 'b'")
        expired = f.obj.get("trust_expired")
        if expired is not None and not isinstance(expired, bool):
            f.fail("trust_expired", "must be a boolean")
        return cls(
            agent_version=f.string("agent_version", max_len=64),
            runtime=f.string("runtime", max_len=32),
            runtime_version=f.string("runtime_version", max_len=64),
            sku=hw.string("sku", pattern=ID_RE),
            arch=hw.string("arch", max_len=32),
            ram_bytes=hw.integer("ram_bytes", lo=0),
            model=ModelRef.parse(model) if model else None,
            active_slot=active,
            slots=slots,
            flash_free_bytes=f.opt_integer("flash_free_bytes", lo=0),
            tags=tuple(f.strings("tags", max_items=32, max_len=64)),
            trust_version=f.opt_integer("trust_version", lo=1),
            trust_expired=expired,
            trust_refused=f.opt_string("trust_refused", max_len=64),
        )


@dataclass(frozen=True)
class Telemetry:
    """One flat telemetry point: numbers only, ``ts`` (epoch ms) and ``seq`` always present."""

    values: dict[str, float]

    @property
    def ts(self) -> int:
        return int(self.values["ts"])

    @property
    def seq(self) -> int:
        return int(self.values["seq"])

    def to_dict(self) -> JsonObject:
        return {k: (int(v) if k in ("ts", "seq") else v) for k, v in self.values.items()}

    @classmethod
    def parse(cls, data: bytes) -> Telemetry:
        """Raises: PayloadError if a value is not a finite number or a key is not a metric name."""
        f = _load(TELEMETRY, data)
        if len(f.obj) > MAX_TELEMETRY_KEYS:
            raise PayloadError(f"telemetry has {len(f.obj)} keys, limit {MAX_TELEMETRY_KEYS}")
        values: dict[str, float] = {}
        for key in f.obj:
            if not METRIC_RE.fullmatch(key):
                raise PayloadError(f"telemetry key {key[:40]!r} is not a metric name ({METRIC_RE.pattern})")
            values[key] = f.number(key)
        f.integer("ts", lo=0)
        f.integer("seq", lo=0)
        return cls(values)


@dataclass(frozen=True)
class DeploymentEvent:
    """One step of a deployment on a device, published on ``events/deployment``."""

    deployment_id: str
    state: DeploymentState
    ts: int
    reason: str = ""
    detail: str = ""
    version: str | None = None

    def to_dict(self) -> JsonObject:
        return drop_none(
            {
                "deployment_id": self.deployment_id,
                "state": self.state.value,
                "ts": self.ts,
                "reason": self.reason,
                "detail": self.detail,
                "version": self.version,
            }
        )

    @classmethod
    def parse(cls, data: bytes) -> DeploymentEvent:
        f = _load(EVENTS, data)
        return cls(
            deployment_id=f.string("deployment_id", pattern=ID_RE),
            state=DeploymentState(f.enum("state", tuple(s.value for s in DeploymentState))),
            ts=f.integer("ts", lo=0),
            reason=f.opt_string("reason", max_len=64) or "",
            detail=f.opt_string("detail", max_len=1024) or "",
            version=f.opt_string("version", max_len=128),
        )


@dataclass(frozen=True)
class Command:
    """Base of the commands a device receives; each ``request_id`` is acted on once."""

    kind: ClassVar[str]
    request_id: str

    def to_dict(self) -> JsonObject:
        return {"request_id": self.request_id}


@dataclass(frozen=True)
class DeployCommand(Command):
    kind: ClassVar[str] = CMD_DEPLOY
    deployment_id: str = ""
    url: str = ""
    sha256: str = ""
    size: int = 0

    def to_dict(self) -> JsonObject:
        return {
            "request_id": self.request_id,
            "deployment_id": self.deployment_id,
            "url": self.url,
            "sha256": self.sha256,
            "size": self.size,
        }


@dataclass(frozen=True)
class RollbackCommand(Command):
    kind: ClassVar[str] = CMD_ROLLBACK
    deployment_id: str | None = None
    reason: str = ""

    def to_dict(self) -> JsonObject:
        return drop_none({"request_id": self.request_id, "deployment_id": self.deployment_id, "reason": self.reason})


@dataclass(frozen=True)
class PingCommand(Command):
    kind: ClassVar[str] = CMD_PING


@dataclass(frozen=True)
class ConfigCommand(Command):
    """Change run-time settings (e.g. ``telemetry_interval_s``); values are scalars only."""

    kind: ClassVar[str] = CMD_CONFIG
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> JsonObject:
        return {"request_id": self.request_id, "settings": dict(self.settings)}


@dataclass(frozen=True)
class TrustCommand(Command):
    """Newer trust metadata: the chain of versions (canonical JSON bytes each), oldest first.

    The device verifies each step from the version it holds (``device_agent.bundle.trust``); this
    parser only bounds the payload.
    """

    kind: ClassVar[str] = CMD_TRUST
    chain: tuple[bytes, ...] = ()

    def to_dict(self) -> JsonObject:
        docs = [loads_strict(d, max_bytes=MAX_PAYLOAD[CMD_TRUST], error=PayloadError, what="trust") for d in self.chain]
        return {"request_id": self.request_id, "chain": docs}


@dataclass(frozen=True)
class CaptureCommand(Command):
    """The capture policy in force for this device (retained; ``enabled`` false turns capture off)."""

    kind: ClassVar[str] = CMD_CAPTURE
    policy: CapturePolicy | None = None

    def to_dict(self) -> JsonObject:
        return {"request_id": self.request_id, "policy": self.policy.to_dict() if self.policy else None}


def _trust_command(request_id: str, f: Fields) -> TrustCommand:
    chain: list[bytes] = []
    for i, doc in enumerate(f.array("chain", max_items=MAX_TRUST_CHAIN)):
        if not isinstance(doc, dict):
            f.fail(f"chain[{i}]", "must be a trust document (an object)")
        chain.append(canonical_json(doc))
    if not chain:
        f.fail("chain", "is empty")
    return TrustCommand(request_id=request_id, chain=tuple(chain))


def parse_command(kind: str, data: bytes) -> Command:
    """Parse a ``cmd/…`` payload.

    Raises:
        ProtocolError: unknown kind, malformed or oversized payload.
    """
    if kind not in COMMAND_TOPICS:
        raise TopicError(f"{kind!r} is not a command topic")
    f = _load(kind, data)
    request_id = f.string("request_id", pattern=ID_RE)
    if kind == CMD_DEPLOY:
        url = f.string("url", max_len=2048)
        if not url.startswith(("http://", "https://")):
            f.fail("url", "must be an http(s) URL")
        return DeployCommand(
            request_id=request_id,
            deployment_id=f.string("deployment_id", pattern=ID_RE),
            url=url,
            sha256=f.string("sha256", pattern=SHA256_RE),
            size=f.integer("size", lo=1, hi=1 << 40),
        )
    if kind == CMD_ROLLBACK:
        dep = f.opt_string("deployment_id", pattern=ID_RE)
        return RollbackCommand(
            request_id=request_id, deployment_id=dep, reason=f.opt_string("reason", max_len=256) or ""
        )
    if kind == CMD_PING:
        return PingCommand(request_id=request_id)
    if kind == CMD_TRUST:
        return _trust_command(request_id, f)
    if kind == CMD_CAPTURE:
        return CaptureCommand(request_id=request_id, policy=CapturePolicy.from_obj(f.obj.get("policy"), "cmd/capture"))
    settings = f.raw_obj("settings", max_keys=32)
    for key, value in settings.items():
        if not METRIC_RE.fullmatch(key) or not isinstance(value, str | int | float | bool):
            f.fail("settings", f"entry {key[:40]!r} must be a snake_case name with a scalar value")
    return ConfigCommand(request_id=request_id, settings=settings)


def encode(payload: Info | Telemetry | DeploymentEvent | Command) -> bytes:
    """Serialize a payload object as compact canonical JSON."""
    return canonical_json(payload.to_dict())


def parse_payload(kind: str, data: bytes) -> Any:
    """Dispatch on the topic kind. Raises: ProtocolError."""
    parsers = {STATUS: parse_status, INFO: Info.parse, TELEMETRY: Telemetry.parse, EVENTS: DeploymentEvent.parse}
    if kind in parsers:
        return parsers[kind](data)
    if kind in COMMAND_TOPICS:
        return parse_command(kind, data)
    raise ProtocolError(f"unknown topic kind {kind!r}")
