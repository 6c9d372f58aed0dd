"""The rows the store returns: frozen dataclasses, one per table, fields in the table's column order.

``to_dict()`` gives the columns in that order: the API serializes rows with it, so its JSON keeps the
table's shape. Times are epoch seconds; states are the ``str`` values of their enums.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, NamedTuple


@dataclass(frozen=True)
class _Row:
    def to_dict(self) -> dict[str, Any]:
        """The columns as a dict, in the table's order (JSON documents stay shared, not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class DeviceRow(_Row):
    id: str
    fleet: str
    sku: str | None
    tags: list[str]
    info: dict[str, Any] | None  # the device's latest ``info`` document
    status: str  # online, offline or unknown
    model_name: str | None
    model_version: str | None
    model_sequence: int | None
    first_seen: float
    last_seen: float
    admission: str  # accepted, pending or rejected
    tags_version: int


class DeviceBrief(NamedTuple):
    """What a rollout decides on, per device: no ``info`` document (and ``tags`` only when asked)."""

    id: str
    sku: str | None
    status: str
    model_name: str | None
    model_sequence: int | None
    tags: list[str] | None


@dataclass(frozen=True)
class NewRelease:
    """A verified bundle about to be recorded as a release."""

    name: str
    version: str
    sequence: int
    sha256: str
    size: int  # bytes
    manifest: dict[str, Any]
    artifact: str  # path of the stored bundle


@dataclass(frozen=True)
class ReleaseRow(_Row):
    id: int
    name: str
    version: str
    sequence: int
    sha256: str
    size: int  # bytes
    manifest: dict[str, Any]
    artifact: str  # path of the stored bundle
    created_at: float
    created_by: str

    @property
    def ref(self) -> str:
        """``NAME@VERSION``."""
        return f"{self.name}@{self.version}"

    def public(self) -> dict[str, Any]:
        """What the API shows: every column but ``artifact`` (a path on the server)."""
        return {k: v for k, v in self.to_dict().items() if k != "artifact"}


@dataclass(frozen=True)
class RolloutRow(_Row):
    id: int
    release_id: int
    release: str  # NAME@VERSION
    selector: str
    spec: dict[str, Any]  # RolloutSpec.to_dict()
    state: str  # a RolloutState value
    stage: int  # 0-based
    phase: str  # a Phase value
    phase_started_at: float
    reason: str
    created_at: float
    updated_at: float
    created_by: str


@dataclass(frozen=True)
class DeploymentRow(_Row):
    id: int
    rollout_id: int
    device_id: str
    deployment_id: str
    stage: int
    state: str  # a DeploymentState value
    attempts: int
    created_at: float
    sent_at: float | None
    updated_at: float
    finished_at: float | None
    rollback_sent_at: float | None
    reason: str
    detail: str


@dataclass(frozen=True)
class RollupRow(_Row):
    """One device's telemetry summed over one minute (the ingest flushes these)."""

    device_id: str
    minute: int  # epoch minute
    points: int
    inferences: float
    errors: float
    ips_sum: float
    lat_p95_sum: float
    lat_p95_max: float
    conf_sum: float
    psi_max: float


@dataclass(frozen=True)
class AuditRow(_Row):
    id: int
    ts: float
    actor: str
    action: str
    target: str  # e.g. rollout/3, device/cam-1, release/digits@2.0.0
    detail: str
    role: str  # the caller's role ("" for the fleet manager itself)
    token: str  # the name of the token used ("" for the fleet manager itself)
    source: str  # the client's address


@dataclass(frozen=True)
class TokenRow(_Row):
    """An API token as stored: its hash, never its secret."""

    name: str
    role: str
    hash: str
    created_at: float
    created_by: str
    expires_at: float | None
    revoked_at: float | None

    def public(self) -> dict[str, Any]:
        """What ``tokens ls`` shows: everything but the hash."""
        return {k: v for k, v in self.to_dict().items() if k != "hash"}


@dataclass(frozen=True)
class TrustVersionRow(_Row):
    """One stored version of a fleet's trust metadata."""

    fleet: str
    version: int
    document: str  # canonical trust.json
    expires: float
    created_at: float
    created_by: str
