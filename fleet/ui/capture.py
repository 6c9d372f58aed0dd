"""The console's "Captured data" page (issue 16): the capture policies and what each device holds, the captured
samples (filtered and paged in SQL), and the forms to enable or disable a policy, label a sample, export the
selected samples as a feeds ``.npz`` and purge them (admin). Each calls what the matching route of
``fleet/api_capture.py`` calls, with the same validation (its ``EnableIn`` model) and the same audit."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import ValidationError

from fleet.access import Role, parse_duration
from fleet.api_capture import EnableIn, capture_of
from fleet.capture import FleetCapture
from fleet.errors import InvalidRequestError
from fleet.rollout.model import Selector
from fleet.store.captures import CaptureQuery
from fleet.ui.actions import as_caller, checked
from fleet.ui.console import PREFIX, Console, RefusedError, started
from fleet.ui.pages import _found, _local

PAGE = f"{PREFIX}/capture"
REASONS = ("low-confidence", "drift", "random")
PER_PAGE = 50  # samples per page
DEVICES_SHOWN = 200  # rows of the per-device table at most (the rest is counted)
Text = Annotated[str, Query(max_length=64)]
Sha = Annotated[str, PathParam(max_length=64, pattern="^[0-9a-f]{64}$")]


@dataclass(frozen=True)
class SampleFilter:
    """The samples list's query string: every field optional; ``page`` is 1-based."""

    device: str = ""
    reason: str = ""
    since: str = ""  # a duration back from now (24h, 7d) or a date (2026-12-01)
    page: int = 1

    def query(self, now: float) -> CaptureQuery:
        """The store's query. Raises: InvalidRequestError (an unknown reason, a bad ``since``)."""
        if self.reason and self.reason not in REASONS:
            raise InvalidRequestError(f"reason {self.reason[:20]!r} must be one of {', '.join(REASONS)}")
        return CaptureQuery(device=self.device or None, reason=self.reason or None, since=since_of(self.since, now))

    def link(self, **changes: Any) -> str:
        """The page's URL with these filters (``changes`` applied), empty fields left out."""
        fields = {k: v for k, v in asdict(replace(self, **changes)).items() if v and (k != "page" or v != 1)}
        return PAGE + (f"?{urlencode(fields)}" if fields else "")


def since_of(text: str, now: float) -> float | None:
    """``24h`` (back from now) or ``2026-12-01`` / ``2026-12-01T08:00`` (UTC unless it says) → epoch seconds.

    Raises: InvalidRequestError.
    """
    text = text.strip()
    if not text:
        return None
    if text[-1:].isalpha():
        return now - parse_duration(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequestError(f"since {text[:20]!r} must be a duration (24h, 7d) or a date (2026-12-01)") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def sample_filter(
    device: Text = "", reason: Text = "", since: Text = "", page: Annotated[int, Query(ge=1, le=1_000_000)] = 1
) -> SampleFilter:
    return SampleFilter(device.strip(), reason.strip(), since.strip(), page)


def device_status(cap: FleetCapture, console: Console, now: float) -> tuple[list[dict[str, Any]], int]:
    """Per accepted device: the policy it should hold, whether this server delivered it, its samples. Only
    devices with a policy or samples; at most ``DEVICES_SHOWN`` rows, and how many there are in all.

    The fleet is read as (id, sku, tags) and prefiltered with each live policy's selector parsed once, so
    10,000 devices stay fast; ``device_policy`` (what ``sync`` delivers) then decides each shown row."""
    store, fleet = console.service.store, console.service.fleet
    policies = store.captures.policies(fleet)
    samples = store.captures.by_device(fleet)
    if not policies and not samples:
        return [], 0
    live = [Selector.parse(p.selector) for p in policies if p.enabled and (p.until is None or p.until > now)]
    out: list[dict[str, Any]] = []
    n = 0
    for device, sku, tags in console.queries.accepted_devices(fleet, tags=any(s.tags for s in live)):
        sent = cap.policies.delivered(device)
        if device not in samples and sent is None and not any(s.matches(sku, tags) for s in live):
            continue
        n += 1
        if len(out) >= DEVICES_SHOWN:
            continue
        policy = cap.policies.device_policy(device, sku, tags, now, policies) if policies else None
        held = f"capture-{policy.id}-{'on' if policy.enabled else 'off'}-" if policy else None
        out.append(
            {
                "device": device,
                "sku": sku,
                "policy": policy.id if policy else None,
                "enabled": bool(policy and policy.enabled),
                "delivered": bool(held and (sent or "").startswith(held)),
                "samples": samples.get(device, 0),
            }
        )
    return out, n


def enable_body(form: dict[str, str]) -> dict[str, Any]:
    """The enable form as the API's ``EnableIn`` body (the same bounds). Raises: InvalidRequestError."""
    raw: dict[str, Any] = {k: form.get(k, "").strip() for k in ("selector", "model", "until")}
    raw["rules"] = [r.strip() for r in form.get("rules", "").split(",") if r.strip()]
    for key in ("per_class_max", "max_mb", "max_per_hour"):
        if form.get(key, "").strip():
            raw[key] = form[key].strip()
    raw = {k: v for k, v in raw.items() if v or k in ("selector", "rules")}
    try:
        return EnableIn.model_validate(raw).model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "form"
        raise InvalidRequestError(f"{where}: {first['msg']}") from None


def capture_routes(app: FastAPI, console: Console) -> None:
    _page(app, console)
    _policy_actions(app, console)
    _sample_actions(app, console)


def _page(app: FastAPI, console: Console) -> None:
    service = console.service

    @app.get(PAGE, include_in_schema=False)
    def capture(request: Request, f: Annotated[SampleFilter, Depends(sample_filter)]) -> Response:
        """What ``GET /api/v1/capture/status`` and ``/capture/samples`` give, as one page."""
        started(request)
        who = console.viewer(request)
        cap, now = capture_of(service), service.clock()
        q = _found(lambda: f.query(now))
        rows, total = service.store.captures.page(service.fleet, q, (f.page - 1) * PER_PAGE, PER_PAGE)
        held, n_held = device_status(cap, console, now)
        return console.render(
            request,
            "capture.html",
            who,
            policies=cap.policies.status(now),
            held=held,
            n_held=n_held,
            rows=rows,
            total=total,
            pages=max(1, math.ceil(total / PER_PAGE)),
            f=f,
            reasons=REASONS,
            filtered=bool(q.to_dict()),
        )

    @app.get(PAGE + "/exports/{sha}.npz", include_in_schema=False)
    def export_file(request: Request, sha: Sha) -> Response:
        """An export's ``.npz``, as ``GET /api/v1/capture/exports/SHA.npz`` (any role may read it)."""
        console.viewer(request)
        path = _found(lambda: capture_of(service).samples.export_path(sha))
        return FileResponse(path, media_type="application/octet-stream", filename=f"capture-{sha[:12]}.npz")


def _policy_actions(app: FastAPI, console: Console) -> None:
    service = console.service

    @app.post(PAGE + "/policies", include_in_schema=False)
    async def enable(request: Request) -> Response:
        """Enable a policy (operator), as ``POST /api/v1/capture/policies``."""
        who, form = await checked(console, request, Role.OPERATOR)
        cap = capture_of(service)
        await as_caller(who.principal, lambda: cap.policies.enable(enable_body(form), who.name, service.clock()))
        return RedirectResponse(PAGE, status_code=303)

    @app.post(PAGE + "/policies/disable", include_in_schema=False)
    async def disable(request: Request) -> Response:
        """Disable the enabled policies of one selector (operator), as ``POST /api/v1/capture/policies/disable``."""
        who, form = await checked(console, request, Role.OPERATOR)
        cap = capture_of(service)
        selector = form.get("selector", "")[:512]
        await as_caller(who.principal, lambda: cap.policies.disable(selector, who.name, service.clock()))
        return RedirectResponse(PAGE, status_code=303)


def _filter_of(form: dict[str, str]) -> SampleFilter:
    device, reason, since = (form.get(k, "").strip()[:64] for k in ("device", "reason", "since"))
    return SampleFilter(device, reason, since)


def _sample_actions(app: FastAPI, console: Console) -> None:
    service = console.service

    @app.post(PAGE + "/labels", include_in_schema=False)
    async def label(request: Request) -> Response:
        """Label one sample, or clear its label (operator), as ``POST /api/v1/capture/labels``."""
        who, form = await checked(console, request, Role.OPERATOR)
        triple = (form.get("device", "")[:64], form.get("id", "")[:64], form.get("label", "").strip() or None)
        done = await as_caller(who.principal, lambda: capture_of(service).samples.label([triple], who.name))
        if not done:
            raise RefusedError(404, "not-found", f"no captured sample {triple[1]!r} of device {triple[0]!r}")
        return RedirectResponse(_local(form.get("back", PAGE)), status_code=303)

    @app.post(PAGE + "/exports", include_in_schema=False)
    async def export(request: Request) -> Response:
        """Export the filtered samples as a feeds ``.npz`` (operator), as ``POST /api/v1/capture/exports``,
        then download it."""
        who, form = await checked(console, request, Role.OPERATOR)
        cap, f = capture_of(service), _filter_of(form)
        q = await as_caller(who.principal, lambda: f.query(service.clock()))
        sidecar = await as_caller(who.principal, lambda: cap.samples.export(q, who.name, service.clock()))
        return RedirectResponse(f"{PAGE}/exports/{sidecar['npz_sha256']}.npz", status_code=303)

    @app.post(PAGE + "/purge", include_in_schema=False)
    async def purge(request: Request) -> Response:
        """Delete the filtered samples (admin), as ``POST /api/v1/capture/purge``: a filter is required."""
        who, form = await checked(console, request, Role.ADMIN)
        cap, f = capture_of(service), _filter_of(form)
        q = await as_caller(who.principal, lambda: f.query(service.clock()))
        if not q.to_dict():
            raise RefusedError(400, "invalid", "purge needs a filter (device, reason or since)")
        if form.get("confirm") != "yes":
            raise RefusedError(400, "invalid", "tick the box to confirm the purge")
        await as_caller(who.principal, lambda: cap.samples.purge(q, who.name))
        return RedirectResponse(f.link(page=1), status_code=303)
