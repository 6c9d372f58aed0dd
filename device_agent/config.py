"""``agent.toml``: the device's configuration, one dataclass per section with bounded defaults.

Only the CLI reads this file; components take the dataclasses. Reading uses the standard
library's tomllib. Writing (``edgetool flash``) uses the small emitter below because the standard
library has no TOML writer and this flat schema (strings, numbers, booleans, string lists) does
not justify another dependency on the device.
"""

from __future__ import annotations

import dataclasses
import platform
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agent.errors import ConfigError
from device_agent.protocol import ID_RE


@dataclass(frozen=True)
class DeviceSection:
    id: str
    fleet: str = "default"
    sku: str = "generic"
    arch: str = field(default_factory=lambda: platform.machine().lower() or "unknown")
    ram_bytes: int = 0  # 0: read from the OS
    tags: tuple[str, ...] = ()
    models: tuple[str, ...] = ()  # bundle names this device accepts (edgetool flash --model-name); () = any


@dataclass(frozen=True)
class BrokerSection:
    url: str = "mqtt://127.0.0.1:1883"
    username: str = ""
    password: str = ""
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""
    protocol: str = "auto"  # auto | 5 | 3.1.1
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0


@dataclass(frozen=True)
class TrustSection:
    threshold: int = 1


@dataclass(frozen=True)
class RuntimeSection:
    threads: int = 1


@dataclass(frozen=True)
class TelemetrySection:
    interval_s: float = 10.0
    spool_max_points: int = 10_000  # oldest points are dropped beyond this...
    spool_max_bytes: int = 4 << 20  # ...or beyond this many bytes of spooled payloads
    home_assistant: bool = False  # publish Home Assistant MQTT discovery configs


@dataclass(frozen=True)
class ProbationSection:
    min_inferences: int = 200  # commit after this many inferences...
    seconds: float = 60.0  # ...or after this long, whichever comes first
    max_error_rate: float = 0.01  # fraction of failed inferences
    latency_budget_ms: float = 0.0  # p95 ceiling; 0 = none
    max_latency_ratio: float = 2.0  # p95 vs the previous model's p95; 0 = off
    min_latency_delta_ms: float = 5.0  # ...and only when p95 is also this much slower (scheduling jitter)
    max_boot_tries: int = 2  # restarts during probation before rolling back


@dataclass(frozen=True)
class DownloadSection:
    """Artifact downloads; also the ``FetchConfig`` of ``device_agent.fetch`` (one definition)."""

    max_bytes: int = 1 << 30
    timeout_s: float = 30.0  # per connection attempt and read
    retries: int = 5
    backoff_s: float = 1.0  # first retry delay; doubles, with full jitter, capped at 60 s
    space_margin_bytes: int = 1 << 20  # free space kept beyond the download and the install copy
    allowed_urls: tuple[str, ...] = ()  # URL prefixes artifacts may come from (edgetool flash); () = any


@dataclass(frozen=True)
class ApiSection:
    """The local API (``device_agent.api``): where it listens and what bounds every caller."""

    listen: str = "unix"  # "unix": HOME/run/api.sock; "unix:/path"; or HOST:PORT (TCP, with HOME/api.token)
    max_body_bytes: int = 16 << 20  # .npy / .npz request bodies
    max_json_bytes: int = 2 << 20  # JSON request bodies
    max_decoded_bytes: int = 64 << 20  # arrays of one request once decoded (from their headers)
    max_elements: int = 16 << 20  # array elements of one request
    read_timeout_s: float = 10.0  # per connection, for each read of the request
    max_connections: int = 16  # served at once; more are answered 503 at once


@dataclass(frozen=True)
class ReplaySection:
    rate: float = 0.0  # inferences per second replayed from the bundle's self-test inputs; 0 = off


@dataclass(frozen=True)
class AgentConfig:
    device: DeviceSection
    broker: BrokerSection = field(default_factory=BrokerSection)
    trust: TrustSection = field(default_factory=TrustSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    telemetry: TelemetrySection = field(default_factory=TelemetrySection)
    probation: ProbationSection = field(default_factory=ProbationSection)
    download: DownloadSection = field(default_factory=DownloadSection)
    api: ApiSection = field(default_factory=ApiSection)
    replay: ReplaySection = field(default_factory=ReplaySection)

    def __post_init__(self) -> None:
        for what, value in (("device.id", self.device.id), ("device.fleet", self.device.fleet)):
            if not ID_RE.fullmatch(value):
                raise ConfigError(f"agent.toml: {what} {value!r} must match {ID_RE.pattern}")
        if self.trust.threshold < 1:
            raise ConfigError("agent.toml: trust.threshold must be at least 1")
        if self.telemetry.interval_s <= 0 or self.runtime.threads < 1:
            raise ConfigError("agent.toml: telemetry.interval_s and runtime.threads must be positive")

    def to_toml(self) -> str:
        out: list[str] = ["# edge-agent configuration (written by edgetool flash)"]
        for f in dataclasses.fields(self):
            out.append(f"\n[{f.name}]")
            for key, value in dataclasses.asdict(getattr(self, f.name)).items():
                out.append(f"{key} = {_toml_value(value)}")
        return "\n".join(out) + "\n"


SECTIONS: dict[str, type[Any]] = {
    "device": DeviceSection,
    "broker": BrokerSection,
    "trust": TrustSection,
    "runtime": RuntimeSection,
    "telemetry": TelemetrySection,
    "probation": ProbationSection,
    "download": DownloadSection,
    "api": ApiSection,
    "replay": ReplaySection,
}  # agent.toml's [name] -> its dataclass (the fields of AgentConfig)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _section(cls: type[Any], data: Any, name: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"agent.toml: [{name}] must be a table")
    known = {f.name: f for f in dataclasses.fields(cls)}
    if unknown := sorted(set(data) - set(known)):
        raise ConfigError(f"agent.toml: unknown setting(s) in [{name}]: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, raw in data.items():
        value = raw
        f = known[key]
        default: Any = f.default
        factory: Any = f.default_factory
        if default is dataclasses.MISSING and factory is not dataclasses.MISSING:
            default = factory()
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"agent.toml: {name}.{key} must be a list of strings")
            value = tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif default is not dataclasses.MISSING and type(value) is not type(default):
            raise ConfigError(f"agent.toml: {name}.{key} must be {type(default).__name__}, not {type(value).__name__}")
        values[key] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"agent.toml: [{name}] {exc}") from None


def parse_config(text: str) -> AgentConfig:
    """Raises: ConfigError naming the bad setting."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"agent.toml is not valid TOML: {exc}") from None
    sections = {f.name: f for f in dataclasses.fields(AgentConfig)}
    if unknown := sorted(set(doc) - set(sections)):
        raise ConfigError(f"agent.toml: unknown section(s): {', '.join(unknown)}")
    if "device" not in doc:
        raise ConfigError("agent.toml: the [device] section (with id) is required")
    kwargs = {name: _section(SECTIONS[name], data, name) for name, data in doc.items()}
    return AgentConfig(**kwargs)


def load_config(path: Path) -> AgentConfig:
    try:
        return parse_config(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: is this a device home made by `edgetool flash`?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
