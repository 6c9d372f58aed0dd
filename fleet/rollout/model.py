"""The rollout data model: specs and gates (stored as JSON), read-only views the engine decides on, and
the actions it returns. Everything here is plain data: no clock, no store, no socket.
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from device_agent.protocol import ID_RE, DeploymentState
from fleet.errors import InvalidRequestError


class RolloutState(enum.StrEnum):
    """A rollout's lifecycle state, stored by value."""

    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    WAITING_APPROVAL = "WAITING_APPROVAL"
    SUCCEEDED = "SUCCEEDED"
    ABORTED = "ABORTED"
    ROLLED_BACK = "ROLLED_BACK"

    @property
    def active(self) -> bool:
        return self in (self.RUNNING, self.PAUSED, self.WAITING_APPROVAL)


class Phase(enum.StrEnum):
    """Within a stage: sending deployments and waiting for their outcome, then baking."""

    DEPLOYING = "DEPLOYING"
    BAKING = "BAKING"


@dataclass(frozen=True)
class Threshold:
    """A count (``3``) or a percentage (``10%``) of a population."""

    value: float
    percent: bool = True

    @classmethod
    def parse(cls, text: str | float | int) -> Threshold:
        """Raises: InvalidRequestError for anything but a non-negative number, optionally with ``%``."""
        raw = str(text).strip()
        pct = raw.endswith("%")
        try:
            value = float(raw[:-1] if pct else raw)
        except ValueError:
            raise InvalidRequestError(f"{raw[:40]!r} is not a count or a percentage like 10%") from None
        if not math.isfinite(value) or value < 0 or (pct and value > 100):
            raise InvalidRequestError(f"{raw[:40]!r} is out of range")
        return cls(value, pct)

    def of(self, total: int) -> int:
        """How many of ``total`` this threshold stands for (percentages round up)."""
        if self.percent:
            return min(total, math.ceil(self.value * total / 100 - 1e-9))
        return min(total, int(self.value))

    def __str__(self) -> str:
        number = f"{self.value:g}"
        return f"{number}%" if self.percent else number


@dataclass(frozen=True)
class HealthGate:
    """Model-health comparison of the updated cohort against not-yet-updated devices of the same sku.

    The ``max_*`` fields are effect sizes: the regression the gate is built to catch. A metric fails when a
    one-sided Mann-Whitney U test says, at level ``alpha`` divided by the comparisons tested in the evaluation
    (Bonferroni), that the updated cohort is worse than the baseline by more than half that effect (the
    tolerance; with ``clustered``, a test widened by the design effect of windows clustered in devices), and
    aborts after ``consecutive`` such evaluations ``eval_interval_s`` apart (see ``fleet/rollout/evidence.py``
    and docs/operations.md).
    """

    max_error_rate_increase: float = 0.05  # absolute increase of errors/inferences
    max_p95_ratio: float = 1.5  # updated / baseline latency (p95 and p50)
    max_psi: float = 0.25  # increase of psi_max (output drift) over the baseline cohort of the same sku
    max_conf_drop: float = 0.10  # baseline conf_mean - updated conf_mean
    min_devices: int = 1  # per cohort and sku, below which the comparison is inconclusive
    settle_s: float = 10.0  # seconds after a device's success before its telemetry counts (new-model warm-up)
    min_p95_delta_ms: float = 0.5  # a latency shift only fails if the medians also differ by more ms (sub-ms noise)
    alpha: float = 0.05  # family-wise significance level of one evaluation (every sku and metric tested)
    consecutive: int = 3  # failed evaluations in a row before an abort
    min_windows: int = 5  # telemetry windows per cohort and sku before a test is run
    eval_interval_s: float = 10.0  # seconds between evaluations (the devices' telemetry interval)
    max_inconclusive_s: float = 300.0  # seconds past the bake time an inconclusive gate may hold a stage
    max_samples: int = 1000  # windows per cohort and test (each device's newest first), bounding the work
    clustered: bool = False  # widen each test by the design effect of windows clustered in devices


@dataclass(frozen=True)
class Gates:
    """What must hold for a stage to pass (success) or the rollout to abort (failure), and pacing."""

    success: Threshold = field(default_factory=lambda: Threshold(90.0))
    failure: Threshold = field(default_factory=lambda: Threshold(10.0))
    bake_s: float = 0.0  # seconds to watch a finished stage before the next
    device_timeout_s: float = 600.0  # seconds from sending a deployment to its terminal event
    retries: int = 1  # extra attempts after a FAILED deployment or a timeout
    max_concurrent: int = 1000  # deployments in flight at once
    rate_per_min: int = 0  # new deployments per minute; 0 = unlimited
    approval: bool = False  # wait for `rollout approve` after this stage
    health: HealthGate | None = field(default_factory=HealthGate)


@dataclass(frozen=True)
class Selector:
    """Which devices a rollout targets: any of ``skus`` (empty: all) and all of ``tags``."""

    skus: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> Selector:
        """``sku=a,sku=b,tag=x``. Raises: InvalidRequestError."""
        skus: list[str] = []
        tags: list[str] = []
        for part in filter(None, (p.strip() for p in (text or "").split(","))):
            key, sep, value = part.partition("=")
            if not sep or key not in ("sku", "tag") or not value or len(value) > 64:
                raise InvalidRequestError(f"selector part {part[:40]!r} must be sku=NAME or tag=NAME")
            (skus if key == "sku" else tags).append(value)
        return cls(tuple(sorted(set(skus))), tuple(sorted(set(tags))))

    def matches(self, sku: str | None, tags: tuple[str, ...] | list[str]) -> bool:
        return (not self.skus or sku in self.skus) and set(self.tags) <= set(tags)

    def __str__(self) -> str:
        return ",".join([f"sku={s}" for s in self.skus] + [f"tag={t}" for t in self.tags])


@dataclass(frozen=True)
class Stage:
    size: Threshold
    gates: Gates = field(default_factory=Gates)


@dataclass(frozen=True)
class RolloutSpec:
    """What an operator asked for; stored as JSON with the rollout."""

    release: str  # NAME@VERSION
    sequence: int
    stages: tuple[Stage, ...]
    selector: Selector = field(default_factory=Selector)

    def __post_init__(self) -> None:
        if not self.stages:
            raise InvalidRequestError("a rollout needs at least one stage")
        if len(self.stages) > 20:
            raise InvalidRequestError("a rollout has at most 20 stages")

    @property
    def name(self) -> str:
        return self.release.partition("@")[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> RolloutSpec:
        def gates(g: dict[str, Any]) -> Gates:
            health = g.get("health")
            return Gates(
                **{
                    **g,
                    "success": Threshold(**g["success"]),
                    "failure": Threshold(**g["failure"]),
                    "health": HealthGate(**health) if health else None,
                }
            )

        return cls(
            release=obj["release"],
            sequence=int(obj["sequence"]),
            stages=tuple(Stage(Threshold(**s["size"]), gates(s["gates"])) for s in obj["stages"]),
            selector=Selector(tuple(obj["selector"]["skus"]), tuple(obj["selector"]["tags"])),
        )


# --- views: what the engine reads ----------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    """A device's model-health numbers of one telemetry window; ``ts`` in seconds since the epoch."""

    ts: float
    error_rate: float | None = None
    lat_p95_ms: float | None = None
    psi_max: float | None = None
    conf_mean: float | None = None
    lat_p50_ms: float | None = None


@dataclass(frozen=True)
class DeviceView:
    id: str
    sku: str
    online: bool = True
    model_name: str | None = None
    model_sequence: int | None = None
    health: Health | None = None  # the latest window
    windows: tuple[Health, ...] = ()  # the recent windows, oldest first (bounded by the ingest)


@dataclass(frozen=True)
class DeploymentView:
    device: str
    deployment_id: str
    state: DeploymentState
    stage: int
    attempts: int = 1
    sent_at: float | None = None  # None: recorded but not yet published (a crash in between)
    finished_at: float | None = None
    reason: str = ""
    rollback_sent: bool = False


@dataclass(frozen=True)
class RolloutView:
    id: int
    spec: RolloutSpec
    state: RolloutState
    stage: int
    phase: Phase
    phase_started_at: float
    devices: tuple[DeviceView, ...]  # every device the selector matches, now
    deployments: dict[str, DeploymentView]  # by device id


# --- actions: what the engine returns ------------------------------------------------------------


@dataclass(frozen=True)
class Deploy:
    """Send ``cmd/deploy``; ``new`` records a new attempt first, else re-publish an unsent one."""

    device: str
    deployment_id: str
    stage: int
    attempt: int
    new: bool = True


@dataclass(frozen=True)
class TimeOut:
    device: str
    deployment_id: str


@dataclass(frozen=True)
class Rollback:
    device: str
    deployment_id: str
    reason: str


@dataclass(frozen=True)
class Transition:
    """Change the rollout's state, stage or phase (one transaction, one audit entry)."""

    state: RolloutState
    stage: int
    phase: Phase
    reason: str


Action = Deploy | TimeOut | Rollback | Transition


def deployment_id(rollout_id: int, device: str, attempt: int) -> str:
    """Unique per rollout, device and attempt; a protocol id (``[a-z0-9-]``, ≤ 64 characters)."""
    suffix = "" if attempt <= 1 else f"-a{attempt}"
    candidate = f"r{rollout_id}-{device}{suffix}"
    if len(candidate) <= 64 and ID_RE.fullmatch(candidate):
        return candidate
    digest = hashlib.sha256(f"{rollout_id}/{device}".encode()).hexdigest()[:24]
    return f"r{rollout_id}-{digest}{suffix}"
