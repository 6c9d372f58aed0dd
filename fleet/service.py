"""The fleet manager's operations: releases, dry-run checks, devices, rollouts, and the steps the rollout
runner applies. Thin over the store and the pure rollout core; the API layer only parses and serializes.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_agent.bundle import DeviceCapabilities, Manifest, TrustStore, check_requirements, verify_bundle
from device_agent.errors import BundleError, RequirementError
from device_agent.fsutil import fsync_dir
from device_agent.protocol import Info
from fleet.access import UrlSigner
from fleet.errors import InvalidRequestError, NotFoundError
from fleet.ingest import Ingest
from fleet.rollout import engine, evidence
from fleet.rollout.model import (
    Deploy,
    DeviceView,
    Gates,
    Phase,
    RolloutSpec,
    RolloutState,
    RolloutView,
    Selector,
    Stage,
    Threshold,
    Transition,
)
from fleet.store import DeviceRow, NewRelease, ReleaseRow, RolloutRow, Store
from fleet.trust import FleetTrust

if TYPE_CHECKING:
    from fleet.capture import FleetCapture

ROLLOUT_LEASE = "rollouts"  # the lease whose holder leads rollouts
LIVE = (RolloutState.RUNNING, RolloutState.ABORTED, RolloutState.ROLLED_BACK)  # states the runner ticks


def split_release(ref: str) -> tuple[str, str]:
    """``NAME@VERSION`` → (name, version). Raises: InvalidRequestError."""
    name, sep, version = ref.partition("@")
    if not sep or not name or not version or len(ref) > 200:
        raise InvalidRequestError(f"release {ref[:80]!r} must be NAME@VERSION")
    return name, version


def parse_stages(stages: Sequence[str | int | float]) -> tuple[Threshold, ...]:
    """``["5%", "25%", "100%"]`` or counts; bare numbers ≤ 100 in a list ending with 100 are percentages.

    Raises: InvalidRequestError.
    """
    texts = [str(s).strip() for s in stages]
    if not texts:
        raise InvalidRequestError("--stages needs at least one stage")
    all_bare = all(not x.endswith("%") for x in texts)
    if all_bare and texts[-1] in ("100", "100.0"):  # `--stages 5,25,100` reads as percentages
        texts = [f"{x}%" for x in texts]
    return tuple(Threshold.parse(x) for x in texts)


@dataclass(frozen=True)
class RolloutRequest:
    release: str
    stages: tuple[str, ...]
    selector: str = ""
    gates: Gates = field(default_factory=Gates)
    approval: bool = False  # manual approval after every stage but the last


@dataclass(frozen=True)
class RolloutStatus:
    """A rollout's row with its stage sizes, the targets per stage and deployment counts now."""

    rollout: RolloutRow
    stages: list[str]
    targets: list[int]
    progress: dict[str, int]
    spec: dict[str, Any]
    health: list[dict[str, Any]] = field(default_factory=list)  # the health gate's evidence per sku and metric

    def to_dict(self) -> dict[str, Any]:
        """The row's columns but ``spec``, then stages, targets, progress, the spec and the health evidence."""
        row = {k: v for k, v in self.rollout.to_dict().items() if k != "spec"}
        shown = {"stages": self.stages, "targets": self.targets, "progress": self.progress, "spec": self.spec}
        return {**row, **shown, "health": self.health}


@dataclass(frozen=True)
class DeviceCheck:
    """Whether one targeted device would accept a release, and if not, why."""

    device: str
    sku: str | None
    ok: bool
    reason: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FleetService:
    """Everything an operator (or the rollout runner) can ask of one fleet."""

    def __init__(
        self,
        store: Store,
        ingest: Ingest,
        trust: TrustStore,
        artifacts: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ingest = ingest
        self.fleet = ingest.config.fleet
        self.trust = trust
        self.fleet_trust: FleetTrust | None = None  # set when serving with --trust-metadata
        self.capture: FleetCapture | None = None  # field data capture (fleet.api_capture creates one on use)
        self.artifacts = artifacts
        self.clock = clock
        self.device_view_ttl_s = 1.0  # seconds a rollout's device list is reused (see device_views)
        self._views: dict[str, tuple[float, tuple[DeviceView, ...]]] = {}
        artifacts.mkdir(parents=True, exist_ok=True)

    # --- releases -------------------------------------------------------------------------------

    def add_release(self, data: bytes, actor: str) -> ReleaseRow:
        """Verify ``data`` against the fleet's trusted keys, store the artifact, record the release.

        Raises:
            BundleError: the bundle is refused (e.g. ``UnknownKeyError`` for an untrusted signer).
            ConflictError: NAME@VERSION exists already.
        """
        fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".efb", dir=self.artifacts)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fsync(fh.fileno())
        try:
            return self.add_release_file(Path(name), hashlib.sha256(data).hexdigest(), actor)
        finally:
            Path(name).unlink(missing_ok=True)

    def add_release_file(self, upload: Path, sha256: str, actor: str) -> ReleaseRow:
        """As ``add_release`` for an uploaded file (in the artifacts directory) whose sha256 the caller took
        while writing it: verified in place through a memory map, then renamed to ``SHA256.efb``.

        Raises: BundleError, ConflictError.
        """
        with upload.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            # not closed explicitly: the verifier's views (held by a refusal's traceback too) keep it
            # exported; it is unmapped when the last of them goes
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            m = verify_bundle(data, self.trust, now=self.clock()).manifest
        path = self.artifacts / f"{sha256}.efb"
        if not path.exists():
            os.replace(upload, path)  # the upload was fsynced: the rename makes it the artifact atomically
            fsync_dir(self.artifacts)
        new = NewRelease(m.name, m.version, m.sequence, sha256, size, m.to_dict(), str(path))
        return self.store.releases.add(new, actor)

    def signer(self, ttl_s: float = 6 * 3600.0) -> UrlSigner:
        """The signer of artifact URLs valid ``ttl_s`` seconds, with the fleet's key from the store (shared by
        its processes)."""
        return UrlSigner(self.store.settings.signing_key(), ttl_s)

    def release(self, ref: str) -> ReleaseRow:
        """Raises: InvalidRequestError (not NAME@VERSION), NotFoundError."""
        return self.store.releases.get(*split_release(ref))

    def artifact_path(self, sha256: str) -> Path:
        """Raises: NotFoundError."""
        return Path(self.store.releases.by_sha(sha256).artifact)

    def check_release(self, ref: str, selector: str = "") -> list[DeviceCheck]:
        """Dry run: every targeted device and whether it would refuse the release, and why.

        The signatures are checked again against the trust in force (a key may have been revoked
        since the release was added): a refusal there is every device's reason.
        """
        release = self.release(ref)
        manifest = Manifest.from_dict(release.manifest)
        refused = self._trust_refusal(Path(release.artifact))
        return [
            DeviceCheck(row.id, row.sku, **(refused or _would_accept(manifest, row.info)))
            for row in self.targeted(Selector.parse(selector))
        ]

    def _trust_refusal(self, artifact: Path) -> dict[str, Any] | None:
        try:
            verify_bundle(artifact.read_bytes(), self.trust, now=self.clock())
        except BundleError as exc:
            return {"ok": False, "reason": exc.code, "detail": str(exc)}
        return None

    def push_trust(self, documents: Sequence[bytes], actor: str) -> dict[str, Any]:
        """Verify and store newer trust metadata, verify releases with it from now on, and send it to
        every device of the fleet (retained: offline devices get it when they reconnect).

        Raises:
            InvalidRequestError: the fleet manager runs with plain keys (--trust), not trust metadata.
            TrustError: a document does not verify.
        """
        if self.fleet_trust is None:
            raise InvalidRequestError("this fleet manager trusts plain keys: start it with --trust-metadata")
        meta = self.fleet_trust.push(documents, actor)
        self.trust = meta.release_store()
        sent = self.fleet_trust.send(row.id for row in self.store.devices.all(self.fleet))
        return {"version": meta.version, "devices": sent, "expires": meta.expires}

    # --- devices --------------------------------------------------------------------------------

    def targeted(self, selector: Selector) -> list[DeviceRow]:
        """The accepted devices ``selector`` matches (pending and rejected ones are never targeted)."""
        return self.listed(selector, "accepted")

    def listed(self, selector: Selector, admission: str | None = None) -> list[DeviceRow]:
        """The devices ``selector`` matches, of one admission state or of all."""
        rows = self.store.devices.all(self.fleet, admission)
        return [r for r in rows if selector.matches(r.sku, r.tags or [])]

    def device_views(self, selector: Selector) -> tuple[DeviceView, ...]:
        """The selected devices as a rollout sees them; reused for ``device_view_ttl_s`` (monotonic) so the
        runner's ticks do not re-read a large fleet every half second."""
        key = str(selector)
        cached = self._views.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.device_view_ttl_s:
            return cached[1]
        views = self._device_views(selector)
        self._views[key] = (time.monotonic(), views)
        return views

    def _device_views(self, selector: Selector) -> tuple[DeviceView, ...]:
        health, windows = self.ingest.health, self.ingest.windows
        return tuple(
            DeviceView(
                id=d.id,
                sku=d.sku or "unknown",
                online=d.status == "online",
                model_name=d.model_name,
                model_sequence=d.model_sequence,
                health=health(d.id),
                windows=windows(d.id),
            )
            for d in self.store.devices.briefs(self.fleet, tags=bool(selector.tags))
            if selector.matches(d.sku, d.tags or [])
        )

    # --- rollouts -------------------------------------------------------------------------------

    def start_rollout(self, req: RolloutRequest, actor: str) -> int:
        """Raises: NotFoundError (no such release), InvalidRequestError (bad stages or selector, no device)."""
        release = self.release(req.release)
        sizes = parse_stages(req.stages)
        last = len(sizes) - 1
        stages = tuple(
            Stage(size, _with_approval(req.gates, req.approval and i < last)) for i, size in enumerate(sizes)
        )
        spec = RolloutSpec(release.ref, release.sequence, stages, Selector.parse(req.selector))
        if not self.targeted(spec.selector):
            raise InvalidRequestError(f"no device matches the selector {str(spec.selector) or '(all)'!r}")
        return self.store.rollouts.create(release, spec, actor, self.clock())

    def view(self, rollout_id: int, *, finished_without_devices: bool = False) -> tuple[RolloutRow, RolloutView]:
        """The stored rollout row and the engine's view of it now.

        ``finished_without_devices`` leaves the device list out of finished rollouts (the engine only
        needs their deployments, to send outstanding rollbacks), which keeps the runner's step cheap.

        Raises: NotFoundError.
        """
        row = self.store.rollouts.get(rollout_id)
        spec = RolloutSpec.from_dict(row.spec)
        state = RolloutState(row.state)
        skip = finished_without_devices and not state.active
        view = RolloutView(
            id=row.id,
            spec=spec,
            state=state,
            stage=row.stage,
            phase=Phase(row.phase),
            phase_started_at=row.phase_started_at,
            devices=() if skip else self.device_views(spec.selector),
            deployments=self.store.deployments.views(rollout_id),
        )
        return row, view

    def status(self, rollout_id: int) -> RolloutStatus:
        """Raises: NotFoundError."""
        row, view = self.view(rollout_id)
        stages = [str(s.size) for s in view.spec.stages]
        gate = view.spec.stages[view.stage].gates.health
        health = []
        if gate is not None and view.state.active:
            verdict = evidence.judge(view.devices, view.deployments, gate, self.clock())
            health = [e.to_dict() for e in verdict.evidence]
        return RolloutStatus(row, stages, engine.targets(view), engine.progress(view), view.spec.to_dict(), health)

    def command(self, rollout_id: int, verb: str, actor: str) -> RolloutStatus:
        """Pause, resume, abort, approve or roll back. Raises: NotFoundError, ConflictError."""
        row, view = self.view(rollout_id)
        transition = engine.command(view, verb)
        if not self.store.rollouts.transition(rollout_id, row, transition, actor, self.clock()):
            return self.command(rollout_id, verb, actor)  # it moved meanwhile: decide again on the new state
        return self.status(rollout_id)

    def rollback_release(self, ref: str, actor: str) -> list[int]:
        """Roll back every rollout of NAME@VERSION (aborting active ones). Raises: NotFoundError."""
        release = self.release(ref)
        ids = []
        for row in self.store.rollouts.find(release=release.ref):
            if RolloutState(row.state) in (RolloutState.ABORTED, RolloutState.ROLLED_BACK):
                continue
            self.command(row.id, "rollback", actor)
            ids.append(row.id)
        if not ids:
            raise NotFoundError(f"no rollout of {ref} to roll back")
        return ids

    # --- what the rollout runner applies ----------------------------------------------------------

    def lead_rollouts(self, holder: str, now: float, ttl: float) -> bool:
        """Take or renew the lead of this fleet's rollouts until ``now + ttl``; False while another holds it."""
        return self.store.leases.acquire(ROLLOUT_LEASE, holder, now, ttl)

    def rollout_leader(self, now: float) -> str | None:
        return self.store.leases.holder(ROLLOUT_LEASE, now)

    def live_rollouts(self) -> list[RolloutRow]:
        """Rollouts the runner still ticks: running, or finished with rollbacks possibly outstanding."""
        return self.store.rollouts.find(states=LIVE)

    def transition(self, expect: RolloutRow, to: Transition, actor: str, now: float) -> RolloutRow | None:
        """Apply ``to`` if the rollout is still as ``expect`` says; the new row, or None if it moved meanwhile."""
        if not self.store.rollouts.transition(expect.id, expect, to, actor, now):
            return None
        return self.store.rollouts.get(expect.id)

    def record_deploys(self, rollout_id: int, deploys: Sequence[Deploy], now: float) -> None:
        """Record new attempts (QUEUED, not yet sent) before their commands are published."""
        self.store.deployments.record(rollout_id, deploys, now)

    def mark_deploys_sent(self, deployment_ids: Sequence[str], now: float) -> None:
        self.store.deployments.mark_sent(deployment_ids, now)

    def mark_rollbacks_sent(self, deployment_ids: Sequence[str], now: float) -> None:
        self.store.deployments.mark_rollbacks_sent(deployment_ids, now)

    def time_out(self, deployment_id: str, now: float) -> None:
        """A device did not finish in time: its deployment FAILED (reason ``timeout``)."""
        self.store.deployments.mark_timed_out(deployment_id, now)


def _with_approval(gates: Gates, approval: bool) -> Gates:
    return replace(gates, approval=approval)


def _would_accept(manifest: Manifest, info_obj: Any) -> dict[str, Any]:
    """``ok``, ``reason`` and ``detail`` for one device's latest info document."""
    if not info_obj:
        return {"ok": False, "reason": "no-info", "detail": "the device has not reported its info yet"}
    info = Info.parse(json.dumps(info_obj).encode())
    if info.trust_expired:
        detail = f"the device's trust metadata (version {info.trust_version}) has expired: push a newer version"
        return {"ok": False, "reason": "trust-expired", "detail": detail}
    model = info.model
    if model and model.name == manifest.name and model.sequence >= manifest.sequence:
        detail = f"device runs {model.name} sequence {model.sequence}, release has {manifest.sequence}"
        return {"ok": False, "reason": "downgrade", "detail": detail}
    caps = DeviceCapabilities(
        runtimes={info.runtime: info.runtime_version},
        agent_version=info.agent_version,
        arch=info.arch,
        ram_bytes=info.ram_bytes,
        flash_free_bytes=info.flash_free_bytes,
    )
    try:
        check_requirements(manifest, caps)
    except RequirementError as exc:
        return {"ok": False, "reason": exc.code, "detail": str(exc)}
    return {"ok": True, "reason": "", "detail": ""}
