"""The device's capture, put together: the persisted policy, the sampler (attached to the engine only while
a policy is live), the store and the uploader, with their two threads (rules worker, uploads)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from device_agent.capture.policy import CapturePolicy
from device_agent.capture.sampler import Sampler
from device_agent.capture.store import CaptureStore
from device_agent.capture.upload import Uploader
from device_agent.engine import InferenceEngine
from device_agent.errors import PayloadError
from device_agent.fsutil import atomic_write

log = logging.getLogger("edge-agent")
UPLOAD_INTERVAL_S = 2.0  # seconds between upload attempts while samples wait
POLICY_FILE, SAMPLES_DIR = "policy.json", "samples"
IDLE_BYTES, IDLE_COUNT = 20 << 20, 10_000  # store bounds before any policy


def load_policy(root: Path) -> CapturePolicy | None:
    """The policy persisted under ``root`` (HOME/capture), or None (none, or unreadable: capture stays off)."""
    try:
        return CapturePolicy.from_obj(json.loads((root / POLICY_FILE).read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, PayloadError) as exc:
        log.warning("capture: ignoring %s: %s", root / POLICY_FILE, exc)
        return None


class Capture:
    """One device's capture. ``apply`` takes a new policy (from ``cmd/capture``)."""

    def __init__(self, root: Path, identity: Mapping[str, str], clock: Callable[[], float] = time.time) -> None:
        self.root, self.clock = root, clock
        self.policy = load_policy(root)
        p = self.policy
        self.store = CaptureStore(
            root / SAMPLES_DIR, p.max_bytes if p else IDLE_BYTES, p.max_count if p else IDLE_COUNT
        )
        self.sampler = Sampler(self.store, identity, clock)
        self.uploader = Uploader(self.store, f"{identity.get('fleet', '')}/{identity.get('device', '')}")
        self.engine: InferenceEngine | None = None
        self._wake = threading.Event()

    def attach(self, engine: InferenceEngine) -> None:
        self.engine = engine
        self.sampler.bind(engine)  # the engine's sink while selection is on (``Sampler.bind``)
        self._install()

    def _install(self) -> None:
        self.sampler.set_policy(self.policy)

    def apply(self, policy: CapturePolicy | None) -> None:
        """Persist ``policy`` (0600: it holds the upload token), then act on it."""
        if policy is not None:
            atomic_write(self.root / POLICY_FILE, json.dumps(policy.to_dict(), sort_keys=True).encode(), mode=0o600)
            self.store.resize(policy.max_bytes, policy.max_count)
        self.policy = policy
        self._install()
        log.info("capture policy %s: %s", policy.id if policy else "-", "on" if self.live else "off")
        self._wake.set()

    @property
    def live(self) -> bool:
        return self.sampler.policy is not None

    def threads(self, stop: threading.Event) -> list[tuple[str, Callable[[], None]]]:
        """The worker and the uploader loops, for the supervisor to run."""
        return [("capture-rules", lambda: self.sampler.run(stop)), ("capture-upload", lambda: self._uploads(stop))]

    def _uploads(self, stop: threading.Event) -> None:
        while not stop.is_set():
            wait = max(UPLOAD_INTERVAL_S, self.uploader.backoff_s)
            if self._wake.wait(wait):
                self._wake.clear()
            if self.sampler.policy is None and self.policy is not None and self.policy.enabled:
                self._install()  # e.g. the model changed back to one the policy names
            self.upload_now()

    def upload_now(self) -> None:
        p = self.policy
        if p is None or not p.upload_url or not p.token or not len(self.store):
            return
        while len(self.store):
            result = self.uploader.upload_once(p.upload_url, p.token, p.batch)
            if result.error or not (result.confirmed or result.rejected):
                return

    def status(self) -> dict[str, Any]:
        """For ``edge-agent status`` and telemetry: the policy (without its token) and the counters."""
        s, u = self.store, self.uploader
        return {
            "enabled": self.live,
            "policy": self.policy.public() if self.policy else None,
            "stored": len(s),
            "stored_bytes": s.size_bytes,
            "max_bytes": s.max_bytes,
            "dropped": s.dropped,
            "store_errors": s.errors,  # samples a full disk (or another I/O error) refused
            "uploaded": u.uploaded,
            "upload_failures": u.failures,
            "last_upload_error": u.last_error or None,
            **{f"rules_{k}": v for k, v in self.sampler.counts.items()},
            "cpu_paused_s": round(self.sampler.paused_total_s, 1),  # selection paused: capture at its CPU share
        }
