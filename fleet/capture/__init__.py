"""Field data capture on the fleet manager: policies and their delivery (``policy``), uploads, the sample
index, exports in the toolchain's feeds format, labels, purges and retention (``samples``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleet.capture.policy import CapturePolicies, Publish, parse_rules
from fleet.capture.samples import CaptureSamples
from fleet.store import Store


@dataclass
class FleetCapture:
    """Capture for one fleet; ``serve`` builds it with a publisher, an API without one only stores."""

    policies: CapturePolicies
    samples: CaptureSamples
    max_age_s: float | None = 90 * 86400.0  # seconds a sample is kept (None: until purged)
    max_bytes: int | None = 10 << 30  # bytes of samples kept at most (the oldest go first)

    @classmethod
    def create(
        cls, store: Store, fleet: str, artifacts: Path, public_url: str, publish: Publish | None = None
    ) -> FleetCapture:
        policies = CapturePolicies(store, fleet, public_url, publish)
        return cls(policies, CaptureSamples(store, fleet, artifacts / "captures", policies))

    def tick(self, now: float) -> None:
        """Periodic work: deliver policies to devices that appeared or changed, apply retention."""
        self.policies.sync(now)
        self.samples.enforce_retention(self.max_age_s, self.max_bytes, now)


__all__ = ["CapturePolicies", "CaptureSamples", "FleetCapture", "parse_rules"]
