"""Capture routes (under /api/v1/capture): policies (enable, disable, status), samples (list, export, labels,
purge) and the devices' upload route, which the access middleware leaves to this module: a device proves
itself with its upload token (``fleet.capture.policy.upload_token``), not an API token. Every mutation is
audited; a refused upload too."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from fleet.access import Principal, caller
from fleet.capture import FleetCapture
from fleet.capture.samples import MAX_UPLOAD
from fleet.errors import AuthError, InvalidRequestError, TooLargeError
from fleet.service import FleetService
from fleet.store.captures import CaptureQuery

EPOCH = Annotated[float | None, Query(ge=0, le=1e11, allow_inf_nan=False)]


class EnableIn(BaseModel):
    selector: str = Field("", max_length=512)
    model: str | None = Field(None, max_length=200)
    rules: list[Annotated[str, Field(max_length=64)]] = Field(..., min_length=1, max_length=8)
    per_class_max: int | None = Field(None, ge=1, le=100_000)
    max_mb: float = Field(20.0, gt=0, le=1024, allow_inf_nan=False)
    max_per_hour: int = Field(120, ge=1, le=10_000_000)
    until: str | None = Field(None, max_length=12, description="e.g. 7d, 12h (default: no end)")


class DisableIn(BaseModel):
    selector: str | None = Field(None, max_length=512, description="None: every enabled policy")


class QueryIn(BaseModel):
    device: str | None = Field(None, max_length=64)
    reason: str | None = Field(None, pattern="^(low-confidence|drift|random)$")
    model: str | None = Field(None, max_length=200)
    sku: str | None = Field(None, max_length=64)
    since: float | None = Field(None, ge=0, le=1e11, allow_inf_nan=False)
    before: float | None = Field(None, ge=0, le=1e11, allow_inf_nan=False)
    labelled: bool | None = None
    limit: int | None = Field(None, ge=1, le=1_000_000)

    def query(self) -> CaptureQuery:
        return CaptureQuery(**self.model_dump())


class LabelIn(BaseModel):
    device: str = Field(..., max_length=64)
    id: str = Field(..., max_length=64)
    label: str | None = Field(None, max_length=64)


class LabelsIn(BaseModel):
    labels: list[LabelIn] = Field(..., min_length=1, max_length=100_000)


def _actor() -> str:
    who = caller.get()
    return who.name if who else "-"


def capture_of(service: FleetService) -> FleetCapture:
    """The fleet's capture (``serve`` sets one with a publisher; otherwise one that only stores)."""
    if service.capture is None:
        service.capture = FleetCapture.create(service.store, service.fleet, service.artifacts, "http://127.0.0.1")
    return service.capture


def capture_routes(router: APIRouter, service: FleetService) -> None:
    """Register the routes on ``router`` (under /api/v1)."""
    _policy_routes(router, service)
    _sample_routes(router, service)

    @router.post("/capture/upload", include_in_schema=False)
    async def upload(request: Request) -> dict[str, Any]:
        """A device's batch of samples (``application/x-edgefleet-capture``), authorized by its upload token."""
        device = request.headers.get("x-edgefleet-device", "")[:200]
        token = request.headers.get("x-edgefleet-upload-token", "")[:200]
        try:
            body = await request.body()
        except ClientDisconnect:
            raise TooLargeError(f"capture upload cut off (over {MAX_UPLOAD} bytes or the device left)") from None
        cap = capture_of(service)
        try:
            return await run_in_threadpool(cap.samples.receive, device, token, body, service.clock())
        except AuthError as exc:
            source = request.client.host if request.client else ""
            refused = Principal(device or "-", None, source)
            await run_in_threadpool(service.store.audit.refused, refused, "capture.upload", device, str(exc))
            raise


def _policy_routes(router: APIRouter, service: FleetService) -> None:
    @router.post("/capture/policies", status_code=201)
    def enable(body: EnableIn) -> dict[str, Any]:
        """Enable capture for the devices ``selector`` matches (operator; audited; delivered over MQTT)."""
        row = capture_of(service).policies.enable(body.model_dump(), _actor(), service.clock())
        return row.to_dict()

    @router.post("/capture/policies/disable")
    def disable(body: DisableIn) -> dict[str, Any]:
        rows = capture_of(service).policies.disable(body.selector, _actor(), service.clock())
        return {"disabled": [r.id for r in rows]}

    @router.get("/capture/status")
    def status() -> dict[str, Any]:
        return capture_of(service).policies.status(service.clock())

    @router.get("/capture/devices/{device}")
    def device_policy(device: Annotated[str, PathParam(max_length=64)]) -> dict[str, Any]:
        """The policy this device holds (without its token), as ``devices show`` prints it."""
        row = service.store.devices.get(device)
        policy = capture_of(service).policies.device_policy(row.id, row.sku, row.tags or [], service.clock())
        return {"device": device, "policy": policy.public() if policy else None}


def _sample_routes(router: APIRouter, service: FleetService) -> None:
    @router.get("/capture/samples")
    def samples(
        device: Annotated[str | None, Query(max_length=64)] = None,
        reason: Annotated[str | None, Query(pattern="^(low-confidence|drift|random)$")] = None,
        model: Annotated[str | None, Query(max_length=200)] = None,
        since: EPOCH = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    ) -> list[dict[str, Any]]:
        q = CaptureQuery(device=device, reason=reason, model=model, since=since, limit=limit)
        return [{k: v for k, v in r.to_dict().items() if k != "path"} for r in capture_of(service).samples.find(q)]

    @router.post("/capture/exports", status_code=201)
    def export(body: QueryIn) -> dict[str, Any]:
        """Write the selected samples as a feeds .npz (operator; audited); returns its sidecar."""
        return capture_of(service).samples.export(body.query(), _actor(), service.clock())

    @router.get("/capture/exports/{sha}.npz")
    def export_file(sha: Annotated[str, PathParam(max_length=64)]) -> Response:
        path = capture_of(service).samples.export_path(sha)
        return Response(path.read_bytes(), media_type="application/octet-stream")

    @router.post("/capture/labels")
    def labels(body: LabelsIn) -> dict[str, Any]:
        triples = [(x.device, x.id, x.label) for x in body.labels]
        return {"labelled": capture_of(service).samples.label(triples, _actor())}

    @router.post("/capture/purge")
    def purge(body: QueryIn) -> dict[str, Any]:
        """Delete samples for a data-protection request (admin; audited). An empty query needs ``all``."""
        q = body.query()
        if not q.to_dict():
            raise InvalidRequestError("give a query (device, before, ...); purging everything needs before=now")
        return {"purged": capture_of(service).samples.purge(q, _actor())}
