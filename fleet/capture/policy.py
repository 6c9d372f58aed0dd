"""Capture policies: parsed from the operator's rules, stored (audited), and delivered to each device they
select as one retained ``cmd/capture`` (so a device offline now gets it when it reconnects).

A device gets the newest enabled policy whose selector matches it, with its own upload token: an HMAC of
the device's ``FLEET/ID`` under the fleet's key (kept in the store, shared by its processes), so the upload
route can check a device without storing a secret per device, and one device's token is worthless for any
other. A device that had a policy and is no longer selected gets the same policy with ``enabled`` false.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable
from typing import Any

from device_agent import protocol as P
from device_agent._json import canonical_json
from device_agent.capture.policy import CapturePolicy
from fleet.access import parse_duration
from fleet.errors import InvalidRequestError
from fleet.rollout.model import Selector
from fleet.store import Store
from fleet.store.captures import PolicyRow

log = logging.getLogger("fleetctl.capture")
Publish = Callable[[list[tuple[str, bytes]]], None]  # (topic, payload) pairs, published retained at QoS 1
RULE_RE = re.compile(r"(low-confidence|drift|random)(?::([0-9]*\.?[0-9]+(?:e-?[0-9]+)?))?")
UPLOAD_PATH = "/api/v1/capture/upload"


def parse_rules(rules: list[str]) -> dict[str, float]:
    """``["low-confidence:0.6", "drift", "random:0.001"]`` → ``{"low_confidence": 0.6, ...}``.

    Raises: InvalidRequestError (an unknown rule, a value out of range, none at all).
    """
    out: dict[str, float] = {}
    for text in rules:
        m = RULE_RE.fullmatch(text.strip())
        if not m:
            raise InvalidRequestError(f"rule {text[:40]!r} must be low-confidence:T, drift[:PSI] or random:R")
        kind, value = m.group(1), m.group(2)
        if kind == "drift":
            out["drift"] = float(value) if value else 0.5
            continue
        if value is None or not 0.0 < float(value) <= 1.0:
            raise InvalidRequestError(f"rule {kind} needs a value in (0, 1], e.g. {kind}:0.5")
        out[kind.replace("-", "_")] = float(value)
    if not out:
        raise InvalidRequestError("give at least one --rule")
    return out


def upload_token(key: bytes, fleet: str, device: str) -> str:
    """The device's upload token (64 hex digits)."""
    return hmac.new(key, f"capture-upload|{fleet}/{device}".encode(), hashlib.sha256).hexdigest()


class CapturePolicies:
    """Enable/disable policies, and keep every device's retained ``cmd/capture`` in line with them."""

    def __init__(self, store: Store, fleet: str, public_url: str, publish: Publish | None = None) -> None:
        self.store, self.fleet, self.publish = store, fleet, publish
        self.upload_url = public_url.rstrip("/") + UPLOAD_PATH
        self._key: bytes | None = None
        self._sent: dict[str, str] = {}  # device -> request id of the last cmd/capture published

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = hmac.new(self.store.settings.signing_key(), b"capture-upload", hashlib.sha256).digest()
        return self._key

    def token_ok(self, device: str, token: str) -> bool:
        return hmac.compare_digest(upload_token(self.key, self.fleet, device).encode(), token.encode())

    def enable(self, body: dict[str, Any], actor: str, now: float) -> PolicyRow:
        """Raises: InvalidRequestError."""
        selector = str(Selector.parse(body.get("selector") or ""))
        rules = parse_rules(list(body.get("rules") or []))
        max_bytes = int(float(body.get("max_mb") or 20) * 2**20)
        max_per_hour = int(body.get("max_per_hour") or 120)
        per_class = body.get("per_class_max")
        if not 1024 <= max_bytes <= 1 << 30 or not 1 <= max_per_hour <= 10_000_000:
            raise InvalidRequestError("--max-mb must be in [0.001, 1024] and --max-per-hour in [1, 10000000]")
        if per_class is not None and not 1 <= int(per_class) <= 100_000:
            raise InvalidRequestError("--per-class-max must be in [1, 100000]")
        caps = {"per_class_max": per_class, "max_bytes": max_bytes, "max_per_hour": max_per_hour}
        until = now + parse_duration(body["until"]) if body.get("until") else None
        model = body.get("model") or None
        if model is not None and (len(model) > 200 or not re.fullmatch(r"[A-Za-z0-9._-]+(@[A-Za-z0-9.+_-]+)?", model)):
            raise InvalidRequestError(f"--model {model[:60]!r} must be NAME or NAME@VERSION")
        rules |= {k: v for k, v in caps.items() if v is not None}
        row = self.store.captures.enable(self.fleet, selector, model, rules, until, actor, now)
        self.sync()
        return row

    def disable(self, selector: str | None, actor: str, now: float) -> list[PolicyRow]:
        rows = self.store.captures.disable(
            self.fleet, None if selector is None else str(Selector.parse(selector)), actor, now
        )
        self.sync()
        return rows

    def device_policy(
        self, device: str, sku: str | None, tags: list[str], now: float, rows: list[PolicyRow] | None = None
    ) -> CapturePolicy | None:
        """The policy ``device`` should hold now (enabled, or the last one it had, disabled), or None.
        ``rows``: every policy of the fleet, oldest first (read once per ``sync``)."""
        rows = self.store.captures.policies(self.fleet) if rows is None else rows
        live = [
            p
            for p in rows
            if p.enabled and Selector.parse(p.selector).matches(sku, tags) and (p.until is None or p.until > now)
        ]
        if live:
            return self._policy(live[-1], device, enabled=True)
        last = self._sent.get(device)
        if last is None or not last.startswith("capture-p"):
            return None
        policy_id = int(last.split("-")[1][1:])
        had = [p for p in rows if p.id == policy_id]
        return self._policy(had[0], device, enabled=False) if had else None

    def _policy(self, row: PolicyRow, device: str, *, enabled: bool) -> CapturePolicy:
        r = row.rules
        return CapturePolicy(
            id=f"p{row.id}",
            enabled=enabled,
            low_confidence=r.get("low_confidence"),
            drift=r.get("drift"),
            random=r.get("random", 0.0),
            per_class_max=r.get("per_class_max"),
            max_bytes=r.get("max_bytes", 20 << 20),
            max_per_hour=r.get("max_per_hour", 120),
            until=row.until,
            model=row.model,
            upload_url=self.upload_url,
            token=upload_token(self.key, self.fleet, device),
        )

    def sync(self, now: float | None = None) -> int:
        """Publish ``cmd/capture`` to every device whose policy changed; returns how many."""
        import time

        now = time.time() if now is None else now
        messages: list[tuple[str, bytes]] = []
        sent: dict[str, str] = {}
        rows = self.store.captures.policies(self.fleet)
        if not rows:
            return 0  # capture was never enabled: nothing to deliver
        for dev in self.store.devices.all(self.fleet, "accepted"):
            policy = self.device_policy(dev.id, dev.sku, dev.tags or [], now, rows)
            if policy is None:
                continue
            digest = hashlib.sha256(canonical_json(policy.to_dict())).hexdigest()[:12]
            request_id = f"capture-{policy.id}-{'on' if policy.enabled else 'off'}-{digest}"
            if self._sent.get(dev.id) != request_id:
                cmd = P.CaptureCommand(request_id=request_id, policy=policy)
                messages.append((P.topic(self.fleet, dev.id, P.CMD_CAPTURE), P.encode(cmd)))
                sent[dev.id] = request_id
        if messages and self.publish is not None:
            self.publish(messages)
            self._sent.update(sent)
        return len(messages)

    def delivered(self, device: str) -> str | None:
        """The request id of the last ``cmd/capture`` this process published to ``device`` (None: none)."""
        return self._sent.get(device)

    def status(self, now: float) -> dict[str, Any]:
        rows = self.store.captures.policies(self.fleet)
        return {
            "policies": [r.to_dict() | {"expired": r.until is not None and r.until <= now} for r in rows],
            "delivered": len(self._sent),
            "samples": self.store.captures.count(self.fleet),
        }
