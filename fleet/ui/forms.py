"""The console's start-rollout form as the ``RolloutRequest`` the API's ``POST /rollouts`` builds, with the
same bounds as the API's ``GatesIn``. Pure: a dict of form fields in, a request or one ``InvalidRequestError``
line out."""

from __future__ import annotations

import math
from typing import Any

from fleet.errors import InvalidRequestError
from fleet.rollout.model import Gates, HealthGate, Threshold
from fleet.service import RolloutRequest

DAY = 86400.0
# form field -> (HealthGate field, low, high, integer); the API's GatesIn bounds
HEALTH_FIELDS: dict[str, tuple[str, float, float, bool]] = {
    "max_p95_ratio": ("max_p95_ratio", 1.0, 1e9, False),
    "health_settle_s": ("settle_s", 0.0, DAY, False),
    "health_interval_s": ("eval_interval_s", 0.01, DAY, False),
    "health_min_windows": ("min_windows", 1, 100_000, True),
    "health_consecutive": ("consecutive", 1, 100, True),
}


def number(form: dict[str, Any], key: str, default: float, low: float, high: float, *, integer: bool = False) -> Any:
    """A bounded number from the form (``default`` when empty). Raises: InvalidRequestError."""
    raw = str(form.get(key) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise InvalidRequestError(f"{key}: {raw[:20]!r} is not a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequestError(f"{key}: {raw[:20]} must be between {low:g} and {high:g}")
    return value


def health_gate(form: dict[str, Any]) -> HealthGate | None:
    """The model-health gate of the form (None when its box is unticked); empty fields keep the defaults."""
    if not form.get("health"):
        return None
    defaults = HealthGate()
    values = {
        field: number(form, key, getattr(defaults, field), low, high, integer=integer)
        for key, (field, low, high, integer) in HEALTH_FIELDS.items()
    }
    return HealthGate(**values)


def rollout_request(form: dict[str, Any]) -> RolloutRequest:
    """Raises: InvalidRequestError (a bad number, threshold, stage list or selector)."""
    gates = Gates(
        Threshold.parse(form.get("success") or "90%"),
        Threshold.parse(form.get("failure") or "10%"),
        number(form, "bake_s", 0.0, 0.0, 30 * DAY),
        health=health_gate(form),
    )
    stages = tuple(s.strip() for s in str(form.get("stages", "")).split(",") if s.strip())
    if not stages or len(stages) > 20:
        raise InvalidRequestError("stages: give 1 to 20 comma-separated sizes, e.g. 10%,50%,100%")
    release, selector = str(form.get("release", ""))[:200], str(form.get("selector", ""))[:512]
    return RolloutRequest(release, stages, selector, gates, bool(form.get("approval")))
