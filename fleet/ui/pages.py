"""The console's reading pages (GET): overview, devices, device detail, releases (with ``releases check``),
rollouts, rollout detail and its live fragment, audit log, sign-in. Each calls what the API's route of the
same data calls."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response

from fleet.errors import FleetError
from fleet.rollout.model import RolloutState
from fleet.ui.charts import charts
from fleet.ui.console import Console, RefusedError, Viewer, started
from fleet.ui.gate_evidence import from_reason
from fleet.ui.queries import ADMISSIONS, STATUSES, DeviceFilter
from fleet.ui.session import LOGIN_COOKIE

Text = Annotated[str, Query(max_length=64)]
VERBS = {  # the buttons a rollout offers, by state
    "RUNNING": ("pause", "abort", "rollback"),
    "PAUSED": ("resume", "abort", "rollback"),
    "WAITING_APPROVAL": ("approve", "abort", "rollback"),
    "SUCCEEDED": ("rollback",),
}


def page_routes(app: FastAPI, console: Console) -> None:
    _fleet_pages(app, console)
    _detail_pages(app, console)
    _rollout_pages(app, console)

    @app.get("/ui/login", include_in_schema=False)
    def login(request: Request, next: Annotated[str, Query(max_length=512)] = "/ui") -> Response:
        nonce = secrets.token_urlsafe(16)
        response = console.render(request, "login.html", None, nonce=nonce, next=_local(next), error="")
        response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="strict", path="/ui", max_age=3600)
        return response


def _local(url: str) -> str:
    """Only a path of the console itself may follow sign-in (no open redirect)."""
    return url if url.startswith("/ui") and not url.startswith("//") and "\\" not in url else "/ui"


def device_filter(
    q: Text = "",
    sku: Text = "",
    tag: Text = "",
    version: Annotated[str, Query(max_length=128)] = "",
    status: Text = "",
    admission: Text = "",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> DeviceFilter:
    """The devices page's query string, bounded."""
    return DeviceFilter(q, sku, tag, version, status, admission, page)


def _fleet_pages(app: FastAPI, console: Console) -> None:
    service, queries = console.service, console.queries

    @app.get("/ui", include_in_schema=False)
    def overview(request: Request) -> Response:
        started(request)
        who = console.viewer(request)
        rollouts = [r for r in service.store.rollouts.find() if RolloutState(r.state).active]
        return console.render(
            request,
            "overview.html",
            who,
            fleet=service.fleet,
            counts=queries.counts(service.fleet),
            rollouts=rollouts,
            deployments=queries.deployments(limit=10),
            audit=service.store.audit.log(None, 10),
        )

    @app.get("/ui/devices", include_in_schema=False)
    def devices(request: Request, f: Annotated[DeviceFilter, Depends(device_filter)]) -> Response:
        started(request)
        who = console.viewer(request)
        listing = queries.devices(service.fleet, f)
        choices = {**queries.choices(service.fleet), "status": list(STATUSES), "admission": list(ADMISSIONS)}
        return console.render(request, "devices.html", who, f=f, listing=listing, choices=choices)


def _detail_pages(app: FastAPI, console: Console) -> None:
    service, queries = console.service, console.queries

    @app.get("/ui/devices/{device}", include_in_schema=False)
    def device(request: Request, device: Annotated[str, PathParam(max_length=64)]) -> Response:
        who = console.viewer(request)
        row = _found(lambda: service.store.devices.get(device))
        latest = service.ingest.latest(device)
        rollups = [r.to_dict() for r in service.store.rollups.for_device(device)[-60:]]
        info = row.info or {}
        return console.render(
            request,
            "device.html",
            who,
            d=row,
            info=info,
            trust=(info.get("trust_version"), info.get("trust_expired")),
            telemetry=latest.telemetry if latest else {},
            charts=charts(rollups),
            history=queries.deployments(device=device, limit=50),
        )

    @app.get("/ui/releases", include_in_schema=False)
    def releases(request: Request) -> Response:
        who = console.viewer(request)
        return console.render(request, "releases.html", who, releases=service.store.releases.all())

    @app.get("/ui/releases/{ref}", include_in_schema=False)
    def release(
        request: Request,
        ref: Annotated[str, PathParam(max_length=200)],
        selector: Annotated[str, Query(max_length=512)] = "",
        check: bool = False,
    ) -> Response:
        who = console.viewer(request)
        row = _found(lambda: service.release(ref))
        checks = _found(lambda: service.check_release(ref, selector)) if check else None
        return console.render(request, "release.html", who, r=row, selector=selector, checks=checks)

    @app.get("/ui/audit", include_in_schema=False)
    def audit(request: Request, actor: Text = "", limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> Response:
        who = console.viewer(request)
        rows = service.store.audit.log(None, limit, actor=actor or None)
        return console.render(request, "audit.html", who, rows=rows, actor=actor)


def _rollout_pages(app: FastAPI, console: Console) -> None:
    service = console.service

    @app.get("/ui/rollouts", include_in_schema=False)
    def rollouts(request: Request) -> Response:
        who = console.viewer(request)
        return console.render(
            request,
            "rollouts.html",
            who,
            rollouts=service.store.rollouts.find(),
            releases=service.store.releases.all(),
        )

    @app.get("/ui/rollouts/{rollout_id}", include_in_schema=False)
    def rollout(request: Request, rollout_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)]) -> Response:
        who = console.viewer(request)
        return console.render(request, "rollout.html", who, **rollout_context(console, who, rollout_id))

    @app.get("/ui/rollouts/{rollout_id}/live", include_in_schema=False)
    def live(request: Request, rollout_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)]) -> Response:
        """The rollout's live part alone, for htmx to swap in every second."""
        who = console.viewer(request)
        return console.render(request, "rollout_live.html", who, **rollout_context(console, who, rollout_id))


def rollout_context(console: Console, who: Viewer, rollout_id: int) -> dict[str, Any]:
    """What the rollout page shows: its status as the API gives it, per-stage and per-sku progress, the
    health gate's evidence, and the verbs this viewer may use now."""
    status = _found(lambda: console.service.status(rollout_id)).to_dict()
    recorded = not status["health"] and not RolloutState(status["state"]).active
    if recorded:  # a stopped rollout: the gate's numbers as its abort reason recorded them
        status["health"] = from_reason(status["reason"] or "")
    done = sum(n for state, n in status["progress"].items() if state in ("SUCCEEDED",))
    stages = [
        {"n": i + 1, "size": size, "target": target, "current": i == status["stage"]}
        for i, (size, target) in enumerate(zip(status["stages"], status["targets"], strict=False))
    ]
    verbs = VERBS.get(status["state"], ()) if who.can_operate else ()
    return {
        "s": status,
        "stages": stages,
        "succeeded": done,
        "skus": console.queries.per_sku(rollout_id),
        "unsuccessful": console.queries.deployments(rollout=rollout_id, unsuccessful=True, limit=50),
        "verbs": verbs,
        "live": _moving(status),
        "recorded": recorded,
    }


SETTLED = ("FAILED", "REJECTED", "ROLLED_BACK", "targeted")


def _moving(status: dict[str, Any]) -> bool:
    """Whether the page should keep refreshing: the rollout is active, or it was aborted or rolled back and
    some of its devices are still to come back."""
    state = RolloutState(status["state"])
    if state.active:
        return True
    unsettled = any(n for k, n in status["progress"].items() if k not in SETTLED)
    return state in (RolloutState.ABORTED, RolloutState.ROLLED_BACK) and unsettled


def _found(fn: Any) -> Any:
    """``fn()``, with the fleet's errors (not found, invalid) as a refusal page."""
    try:
        return fn()
    except FleetError as exc:
        status = 404 if exc.code == "not-found" else 400
        raise RefusedError(status, exc.code, str(exc)) from None
