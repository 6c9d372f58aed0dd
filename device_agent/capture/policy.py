"""The capture policy a device holds: which inputs to keep, how many, for how long, and where to upload.

Parsed from ``cmd/capture`` (bounded, strict: bytes or a JSON object in, a ``CapturePolicy`` or
``PayloadError`` out) and persisted as ``HOME/capture/policy.json`` (atomic), so a restart keeps it.
Without a policy, or with ``enabled`` false, or past ``until``, nothing is captured.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from device_agent._json import Fields, JsonObject, drop_none
from device_agent.errors import PayloadError

POLICY_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
TOKEN_RE = re.compile(r"[0-9a-f]{64}")
MAX_BYTES = 1 << 30  # bytes: the most a policy may let a device's store hold
MAX_COUNT = 100_000  # samples a device's store holds at most
DRIFT_DEFAULT = 0.5  # PSI of one input against the bundle's reference above which it is a drift outlier


@dataclass(frozen=True)
class CapturePolicy:
    """One policy; ``None`` for a rule means the rule is off."""

    id: str
    enabled: bool = True
    low_confidence: float | None = None  # capture when the top-1 confidence is below this
    drift: float | None = None  # capture when the input's PSI against the reference exceeds this
    random: float = 0.0  # capture this share of all inferences
    per_class_max: int | None = None  # samples kept per predicted class (over the policy's life)
    max_bytes: int = 20 << 20  # bytes the device's store holds at most
    max_count: int = 10_000  # samples the device's store holds at most
    max_per_hour: int = 120  # samples captured per hour at most
    until: float | None = None  # epoch seconds; None: no end
    model: str | None = None  # NAME or NAME@VERSION the policy applies to; None: any
    upload_url: str | None = None
    token: str | None = None  # this device's upload token (HMAC the fleet manager derives per device)
    batch: int = 32  # samples per upload at most

    def active(self, now: float) -> bool:
        return self.enabled and (self.until is None or now < self.until)

    def applies_to(self, name: str, version: str) -> bool:
        if self.model is None:
            return True
        want, _, want_version = self.model.partition("@")
        return want == name and (not want_version or want_version == version)

    def to_dict(self) -> JsonObject:
        return drop_none(asdict(self))

    def public(self) -> JsonObject:
        """What status documents show: everything but the upload token."""
        return {k: v for k, v in self.to_dict().items() if k != "token"}

    @classmethod
    def from_obj(cls, obj: Any, where: str = "policy") -> CapturePolicy:
        """Raises: PayloadError (a field missing, of the wrong type or out of range)."""
        f = Fields(obj, where, PayloadError)
        url = f.opt_string("upload_url", max_len=2048)
        if url is not None and not url.startswith(("http://", "https://")):
            f.fail("upload_url", "must be an http(s) URL")
        enabled = f.obj.get("enabled", True)
        if not isinstance(enabled, bool):
            f.fail("enabled", "must be a boolean")
        return cls(
            id=f.string("id", pattern=POLICY_ID_RE),
            enabled=enabled,
            low_confidence=_opt_number(f, "low_confidence", 0.0, 1.0),
            drift=_opt_number(f, "drift", 0.0, 1e6),
            random=_opt_number(f, "random", 0.0, 1.0) or 0.0,
            per_class_max=f.opt_integer("per_class_max", lo=1, hi=MAX_COUNT),
            max_bytes=f.opt_integer("max_bytes", lo=1024, hi=MAX_BYTES) or cls.max_bytes,
            max_count=f.opt_integer("max_count", lo=1, hi=MAX_COUNT) or cls.max_count,
            max_per_hour=f.opt_integer("max_per_hour", lo=1, hi=10_000_000) or cls.max_per_hour,
            until=_opt_number(f, "until", 0.0, 1e11),
            model=f.opt_string("model", max_len=200),
            upload_url=url,
            token=f.opt_string("token", pattern=TOKEN_RE),
            batch=f.opt_integer("batch", lo=1, hi=1000) or cls.batch,
        )


def _opt_number(f: Fields, key: str, lo: float, hi: float) -> float | None:
    return f.number(key, lo=lo, hi=hi) if f.obj.get(key) is not None else None


def stored_summary(root: Path) -> JsonObject | None:
    """The persisted policy under ``root`` (HOME/capture) without its token, for a status document; None
    when there is none (capture is off)."""
    try:
        return CapturePolicy.from_obj(json.loads((root / "policy.json").read_bytes())).public()
    except FileNotFoundError:
        return None
    except (OSError, ValueError, PayloadError) as exc:
        return {"error": str(exc)[:200]}
