"""Over-the-air updates with A/B slots, self-test, probation and automatic rollback.

Every step is idempotent and the state that says where we are is written atomically before the
step that depends on it, so a restart at any instant either resumes the deployment or rolls back:

1. receive: remember the deployment id (acted on once) and the pending command → state.json
2. download (resumable) → verify (signatures, hashes, sequence, requirements) → REJECTED on refusal
3. install: forget the inactive slot as a rollback target, then atomically replace its bundle file
4. self-test in the new runtime; a mismatch → ROLLED_BACK, the active model never changed
5. activate: state.json says active=new, on probation → hot swap
6. probation: commit after N inferences or T seconds if the gates hold, else roll back
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from device_agent import protocol as P
from device_agent.bundle import TrustStore
from device_agent.bundle.archive import Buffer
from device_agent.bundle.reader import DeviceCapabilities
from device_agent.config import AgentConfig, ProbationSection
from device_agent.diskguard import check_space, storage_error, update_space_needed
from device_agent.engine import InferenceEngine
from device_agent.errors import (
    BundleError,
    DownloadError,
    NoVerifiedModelError,
    RuntimeLoadError,
    StateError,
    StorageError,
    TrustExpiredError,
    UrlNotAllowedError,
    WrongModelError,
)
from device_agent.fetch import Fetcher
from device_agent.floor import RollbackFloor, merge_floors
from device_agent.fsutil import fsync_dir, map_file, sha256_file
from device_agent.home import DeviceState, Home, Pending, Probation, other
from device_agent.hooks import NO_HOOKS, UpdateHooks
from device_agent.model import LoadedModel
from device_agent.stats import Snapshot
from device_agent.urlpolicy import redact_url, url_allowed

log = logging.getLogger("edge-agent")
MIN_GATE_SAMPLES = 20  # inferences before error-rate and latency gates are judged


def probation_verdict(
    snap: Snapshot, cfg: ProbationSection, baseline_p95_ms: float | None, elapsed_s: float
) -> tuple[str, str]:
    """Pure: ("wait" | "commit" | "rollback", reason) for a model on probation."""
    if snap.inferences >= min(MIN_GATE_SAMPLES, cfg.min_inferences):
        if snap.error_rate > cfg.max_error_rate:
            return "rollback", f"probation-errors: error rate {snap.error_rate:.3f} > {cfg.max_error_rate}"
        p95 = snap.lat_ms.get("p95")
        if p95 is not None and cfg.latency_budget_ms and p95 > cfg.latency_budget_ms:
            return "rollback", f"probation-latency: p95 {p95:.2f} ms > budget {cfg.latency_budget_ms} ms"
        if (
            p95 is not None
            and baseline_p95_ms
            and cfg.max_latency_ratio
            and p95 > cfg.max_latency_ratio * baseline_p95_ms
            and p95 - baseline_p95_ms > cfg.min_latency_delta_ms
            # a slower model is slower throughout: its median passes the old model's p95, whereas the p95 of
            # a short probation window is nearly its maximum, which one scheduling stall decides
            and snap.lat_ms.get("p50", p95) > baseline_p95_ms
        ):
            return "rollback", (
                f"probation-latency: p95 {p95:.2f} ms > {cfg.max_latency_ratio}x the previous model's "
                f"{baseline_p95_ms:.2f} ms (median {snap.lat_ms.get('p50', p95):.2f} ms)"
            )
    if snap.inferences >= cfg.min_inferences or elapsed_s >= cfg.seconds:
        return "commit", f"{snap.inferences} inferences in {elapsed_s:.0f} s, error rate {snap.error_rate:.3f}"
    return "wait", ""


class Updater:
    """Owns ``state.json`` and the slots. Thread-safe: one lock around every state transition."""

    def __init__(
        self,
        home: Home,
        config: AgentConfig,
        trust: TrustStore,
        fetcher: Fetcher,
        emit: Callable[[P.DeploymentEvent], None] = lambda event: None,
        capabilities: Callable[[], DeviceCapabilities] = DeviceCapabilities,
        hooks: UpdateHooks = NO_HOOKS,
    ) -> None:
        self.home, self.config, self.trust, self.fetcher = home, config, trust, fetcher
        self.installed_trust: TrustStore | None = None  # for slots already installed (None: ``trust``)
        self._emit, self._capabilities = emit, capabilities
        self.hooks = hooks
        self._load = hooks.load  # verify + load a bundle (``LoadedModel.load`` unless a hook shares runtimes)
        self.lock = threading.RLock()
        self.state = DeviceState()
        self.engine: InferenceEngine | None = None
        self.floor = RollbackFloor(home.floor_file)

    # --- boot ----------------------------------------------------------------------------------

    def boot(self) -> LoadedModel:
        """Load state (recovering it if needed), settle probation, load the active verified model.

        Raises:
            NoVerifiedModelError: no slot verifies.
        """
        with self.lock:
            try:
                self.state = self.home.load_state()
            except StateError:
                self.state = self._recover_state()
            pending = self.state.pending
            if pending is not None:
                pending.boots += 1
                self.save_quietly()
                if pending.boots > self.config.probation.max_boot_tries:
                    detail = f"the agent restarted {pending.boots - 1} times during this deployment"
                    self._finish(pending.deployment_id, P.DeploymentState.FAILED, "crash-loop", detail)
            pr = self.state.probation
            if pr is not None:
                pr.boots += 1
                self.save_quietly()
                if pr.boots > self.config.probation.max_boot_tries:
                    self._abandon_probation(f"probation-restarts: {pr.boots - 1} restarts during probation")
            try:
                model = self._load_slot(self.state.active)
            except (BundleError, RuntimeLoadError, OSError) as exc:
                model = self._fall_back(exc)
            self._restore_floor(model if self.state.probation is None else None)
            return self.hooks.serve(model)

    def _restore_floor(self, committed_model: LoadedModel | None) -> None:
        """The floor is the maximum of state.json, the floor file and the committed active model."""
        sources = [self.state.committed, self.floor.read()]
        if committed_model is not None:
            sources.append({committed_model.manifest.name: committed_model.manifest.sequence})
        merged = merge_floors(*sources)
        if merged != self.state.committed:
            log.warning("rollback floor restored from its other copies: %s (state.json had %s)", merged, sources[0])
            self.state.committed = merged
            self.save_quietly()
        with contextlib.suppress(OSError):
            self.floor.raise_to(merged)

    def _recover_state(self) -> DeviceState:
        """state.json is unreadable: activate the verifying slot with the highest sequence."""
        best: tuple[int, str] | None = None
        for slot, path in self.home.slots():
            if path.exists():
                try:
                    m = self._load_slot(slot).manifest
                except (BundleError, RuntimeLoadError, OSError):
                    continue
                if best is None or m.sequence > best[0]:
                    best = (m.sequence, slot)
        if best is None:
            raise NoVerifiedModelError(f"state.json is unreadable and no slot in {self.home.root} verifies")
        state = DeviceState(active=best[1])
        with contextlib.suppress(OSError):
            self.home.save_state(state)
        return state

    def _fall_back(self, error: Exception) -> LoadedModel:
        prev = self.state.previous
        if prev is None:
            raise NoVerifiedModelError(
                f"active slot {self.state.active} does not verify ({error}) and there is no previous slot"
            )
        model = self._load_slot(prev)
        if self.state.probation is not None:
            self._emit_event(
                self.state.probation.deployment_id, P.DeploymentState.ROLLED_BACK, "active-invalid", str(error)
            )
        self.state.active, self.state.previous, self.state.probation = prev, None, None
        self.save_quietly()
        return model

    def _load_slot(self, slot: str) -> LoadedModel:
        trust = self.installed_trust or self.trust
        return self._load(map_file(self.home.slot(slot)), trust, slot=slot, threads=self.config.runtime.threads)

    # --- commands ------------------------------------------------------------------------------

    def receive(self, cmd: P.DeployCommand) -> bool:
        """Record a deploy command; False if this deployment id was already acted on (or we're busy)."""
        with self.lock:
            if cmd.deployment_id in self.state.deployments:
                last = self.state.deployments[cmd.deployment_id]
                self._emit_event(cmd.deployment_id, P.DeploymentState(last), "duplicate", "already handled")
                return False
            busy = self.state.probation or self.state.pending
            self.state.remember_deployment(cmd.deployment_id, P.DeploymentState.QUEUED)
            if busy:
                self.state.remember_deployment(cmd.deployment_id, P.DeploymentState.REJECTED)
                self.save_quietly()
                self._emit_event(
                    cmd.deployment_id, P.DeploymentState.REJECTED, "busy", "another deployment is in progress"
                )
                return False
            if not url_allowed(cmd.url, self.config.download.allowed_urls):
                self.state.remember_deployment(cmd.deployment_id, P.DeploymentState.REJECTED)
                self.save_quietly()
                detail = f"artifact URL {redact_url(cmd.url)} is not under [download] allowed_urls"
                self._emit_event(cmd.deployment_id, P.DeploymentState.REJECTED, UrlNotAllowedError.code, detail)
                return False
            slot = other(self.state.active)
            self.state.pending = Pending(cmd.deployment_id, cmd.request_id, cmd.url, cmd.sha256, cmd.size, slot)
            try:
                self.save()
            except OSError as exc:  # the deployment cannot even be recorded: it ends here, with the reason
                err = storage_error(exc, self.home.root, "recording the deployment")
                self._finish(cmd.deployment_id, P.DeploymentState.FAILED, err.code, str(err))
                return False
        self._emit_event(cmd.deployment_id, P.DeploymentState.QUEUED)
        return True

    def run_pending(self) -> None:
        """Carry the pending deployment as far as probation (or a terminal state). Idempotent."""
        pending = self.state.pending
        if pending is None:
            return
        dep = pending.deployment_id
        try:
            if self._stopped_by_cancel(pending):
                return
            if self.trust.expired(time.time()):  # before any download: nothing new until newer trust arrives
                raise TrustExpiredError(f"trust metadata version {self.trust.version} has expired")
            data = self._obtain(pending)
            if self._stopped_by_cancel(pending):
                return
            self._step(dep, P.DeploymentState.VERIFYING)
            model = self._load(
                data,
                self.trust,
                slot=pending.slot,
                threads=self.config.runtime.threads,
                highest_sequence=self.state.committed,
                device=self._capabilities(),
            )
            pinned = self.config.device.models
            if pinned and model.manifest.name not in pinned:
                raise WrongModelError(
                    f"bundle is for model {model.manifest.name!r}; this device runs {', '.join(pinned)}"
                )
            if self._stopped_by_cancel(pending):
                return
            self._install(pending, model)
            self._selftest_and_activate(pending, model)
        except (DownloadError, StorageError) as exc:
            self._finish(dep, P.DeploymentState.FAILED, exc.code, str(exc))
        except (BundleError, RuntimeLoadError) as exc:
            self._finish(dep, P.DeploymentState.REJECTED, exc.code, str(exc))
        except OSError as exc:  # the disk failed under a step: the deployment ends, the agent goes on
            err = storage_error(exc, self.home.root, "deployment")
            self._finish(dep, P.DeploymentState.FAILED, err.code, str(err))
        finally:
            if self.state.pending is None:
                self._remove_download(dep)

    def _remove_download(self, deployment_id: str) -> None:
        download = self._download_path(deployment_id)
        for p in (download, download.with_name(download.name + ".part")):
            try:
                p.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot remove %s: %s", p, exc.strerror)

    def cancel(self, deployment_id: str | None) -> bool:
        """Cancel the pending deployment (``deployment_id`` None: whichever is pending) before it is
        activated. Persisted, so a restart does not resume it. False if there is nothing to cancel."""
        with self.lock:
            pending = self.state.pending
            if pending is None or deployment_id not in (None, pending.deployment_id):
                return False
            pending.cancelled = True
            self.save_quietly()  # in memory it stops the deployment at its next step all the same
            return True

    def _stopped_by_cancel(self, pending: Pending) -> bool:
        with self.lock:
            if not pending.cancelled:
                return False
        self._finish(
            pending.deployment_id, P.DeploymentState.ROLLED_BACK, "cancelled", "rollback requested before activation"
        )
        return True

    def _download_path(self, deployment_id: str) -> Path:
        return self.home.downloads / f"{deployment_id}.efb"

    def _obtain(self, pending: Pending) -> Buffer:
        """The bundle, mapped from its file (never read into memory): the slot it was installed in
        before a restart, or the download."""
        slot_file = self.home.slot(pending.slot)
        if slot_file.exists() and sha256_file(slot_file) == pending.sha256:
            return map_file(slot_file)  # installed before a restart
        part = self._download_path(pending.deployment_id).with_name(f"{pending.deployment_id}.efb.part")
        have = part.stat().st_size if part.exists() else 0
        needed = update_space_needed(pending.size, have, self.config.download.space_margin_bytes)
        check_space(self.home.root, needed, f"the {pending.size}-byte update")
        self._step(pending.deployment_id, P.DeploymentState.DOWNLOADING)
        path = self.fetcher.download(
            pending.url, self._download_path(pending.deployment_id), pending.size, pending.sha256
        )
        return map_file(path)

    def _install(self, pending: Pending, model: LoadedModel) -> None:
        """Install by rename: the verified download (complete and fsynced) becomes the slot's file."""
        self._step(pending.deployment_id, P.DeploymentState.INSTALLING)
        with self.lock:
            if self.state.previous == pending.slot:
                self.state.previous = None  # the slot is about to change: it is no rollback target any more
                self.save()
        self.hooks.before_install(model)
        download, slot_file = self._download_path(pending.deployment_id), self.home.slot(pending.slot)
        if download.exists():  # else: it was renamed into the slot before a restart
            slot_file.parent.mkdir(parents=True, exist_ok=True)
            os.replace(download, slot_file)
            fsync_dir(slot_file.parent)
            fsync_dir(download.parent)

    def _selftest_and_activate(self, pending: Pending, model: LoadedModel) -> None:
        dep = pending.deployment_id
        self._step(dep, P.DeploymentState.SELFTEST)
        result = self.hooks.after_selftest(model, model.selftest())
        if not result.ok:
            self._finish(dep, P.DeploymentState.ROLLED_BACK, "selftest", result.detail)
            return
        engine = self.engine
        baseline = engine.model_window.snapshot(time.monotonic()).lat_ms.get("p95") if engine else None
        m = model.manifest
        with self.lock:
            if self._stopped_by_cancel(pending):
                return
            new = copy.deepcopy(self.state)  # saved before it becomes the state: a full disk changes nothing
            new.previous, new.active = self.state.active, pending.slot
            new.probation = Probation(pending.slot, dep, m.name, m.version, m.sequence, self._now_ms(), 0, baseline)
            new.pending = None
            new.remember_deployment(dep, P.DeploymentState.PROBATION)
            self.home.save_state(new)
            self.state = new
            if engine is not None:
                engine.swap(self.hooks.serve(model))
        self._emit_event(dep, P.DeploymentState.PROBATION, "", result.detail, m.version)

    # --- probation, commit, rollback -------------------------------------------------------------

    def check_probation(self) -> str:
        """Commit or roll back the model on probation when its gates say so. Returns the verdict."""
        with self.lock:
            pr, engine = self.state.probation, self.engine
            if pr is None or engine is None:
                return "none"
            snap = engine.model_window.snapshot(time.monotonic())
            verdict, reason = probation_verdict(
                snap, self.config.probation, pr.baseline_p95_ms, (self._now_ms() - pr.started_ms) / 1000
            )
            if verdict == "commit":
                if not self._commit(pr):
                    return "wait"
                self._emit_event(pr.deployment_id, P.DeploymentState.SUCCEEDED, "", reason, pr.version)
            elif verdict == "rollback":
                self.rollback(reason.split(":")[0], reason)
            return verdict

    def _commit(self, pr: Probation) -> bool:
        """Raise the floor (floor file, then state.json) and end probation; False (retried at the next
        check) when the disk cannot take it."""
        new = copy.deepcopy(self.state)
        new.committed[pr.name] = max(new.committed.get(pr.name, 0), pr.sequence)
        new.probation = None
        new.remember_deployment(pr.deployment_id, P.DeploymentState.SUCCEEDED)
        try:
            self.floor.raise_to(new.committed)
            self.home.save_state(new)
        except OSError as exc:
            log.warning("commit of %s deferred: %s", pr.deployment_id, storage_error(exc, self.home.root, "commit"))
            return False
        self.state = new
        return True

    def rollback(self, reason: str, detail: str = "", deployment_id: str | None = None) -> bool:
        """Reactivate the previous slot (the model on probation, if any, is abandoned).

        Returns False when there is nothing verified to roll back to.
        """
        with self.lock:
            target = self.state.previous
            if target is None:
                return False
            try:
                model = self._load_slot(target)
            except (BundleError, RuntimeLoadError, OSError):
                return False
            pr = self.state.probation
            dep = pr.deployment_id if pr else (deployment_id or "manual")
            self.state.active, self.state.previous, self.state.probation = target, None, None
            self.state.remember_deployment(dep, P.DeploymentState.ROLLED_BACK)
            self.save_quietly()  # the bad model goes now; a restart before the save retries the rollback
            if self.engine is not None:
                self.engine.swap(self.hooks.serve(model))
        self._emit_event(dep, P.DeploymentState.ROLLED_BACK, reason, detail, model.manifest.version)
        return True

    def _abandon_probation(self, detail: str) -> None:
        pr = self.state.probation
        if pr is None or self.state.previous is None:
            return
        self.state.active, self.state.previous, self.state.probation = self.state.previous, None, None
        self.state.remember_deployment(pr.deployment_id, P.DeploymentState.ROLLED_BACK)
        self.save_quietly()
        self._emit_event(pr.deployment_id, P.DeploymentState.ROLLED_BACK, "probation-restarts", detail)

    # --- helpers ---------------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(time.time() * 1000)

    def save(self) -> None:
        """Raises: OSError (e.g. ENOSPC) when state.json cannot be written."""
        self.home.save_state(self.state)

    def save_quietly(self) -> bool:
        """Write state.json if the disk lets us; on failure log it and keep the state in memory (the
        next save writes it). For records whose loss a restart repairs, never before a slot changes."""
        try:
            self.save()
            return True
        except OSError as exc:
            log.warning("state.json not written: %s", storage_error(exc, self.home.root, "saving state"))
            return False

    def _step(self, deployment_id: str, state: P.DeploymentState) -> None:
        with self.lock:
            self.state.remember_deployment(deployment_id, state)
        self._emit_event(deployment_id, state)
        self.hooks.after_step(deployment_id, state)

    def _finish(self, deployment_id: str, state: P.DeploymentState, reason: str, detail: str) -> None:
        with self.lock:
            self.state.pending = None
            self.state.remember_deployment(deployment_id, state)
            self.save_quietly()
        self._remove_download(deployment_id)  # before the event: an ended deployment holds no disk space
        self._emit_event(deployment_id, state, reason, detail)

    def _emit_event(
        self, dep: str, state: P.DeploymentState, reason: str = "", detail: str = "", version: str | None = None
    ) -> None:
        self._emit(P.DeploymentEvent(dep, state, self._now_ms(), reason, detail[:1000], version))
