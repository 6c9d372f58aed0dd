"""The HTTP API (FastAPI; OpenAPI at ``/docs`` and ``/openapi.json``): devices, releases, rollouts, tokens,
audit, artifact downloads with Range, and ``/metrics``.

Every route but ``/healthz`` (and ``/metrics`` with ``serve --public-metrics``) needs a bearer token with
the right role, checked by ``fleet.api_access.AccessMiddleware`` before a byte of the body is read;
devices download artifacts with the signed URL of their ``cmd/deploy``. Every error is
``{"error": "one line", "code": "kebab-case"}``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request, Response, Security
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from device_agent._json import Fields, canonical_json, loads_strict
from device_agent.bundle.trust import MAX_CHAIN, describe
from device_agent.errors import BundleError, ConfigError, EdgefleetError, TrustError
from fleet import ui
from fleet.access import UrlSigner, caller
from fleet.api_access import API, MAX_BUNDLE, MAX_TRUST_BODY, AccessMiddleware, Authenticator
from fleet.api_admin import admin_routes
from fleet.api_artifacts import ArtifactCache, byte_range, ranged
from fleet.api_capture import capture_of, capture_routes
from fleet.errors import AuthError, ConflictError, ForbiddenError, NotFoundError, TooLargeError
from fleet.metrics import registry_for, render
from fleet.rollout.model import Gates, HealthGate, Selector, Threshold
from fleet.service import FleetService, RolloutRequest

STATUS = {
    NotFoundError: 404,
    ConflictError: 409,
    ForbiddenError: 403,
    AuthError: 401,
    TooLargeError: 413,
    BundleError: 422,
    TrustError: 422,
    ConfigError: 400,
}
MAX_ID = 2**31 - 1  # the largest rollout id the store (PostgreSQL integer) holds
ROLLOUT_ID = Annotated[int, PathParam(ge=1, le=MAX_ID)]
DAY = 86400.0


class ErrorOut(BaseModel):
    """Every error the API answers: one line, and a stable kebab-case code."""

    error: str
    code: str


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in (
        (400, "invalid request"),
        (401, "no valid token"),
        (403, "the token's role does not allow this"),
        (404, "not found"),
        (409, "conflicts with the current state"),
        (413, "request body too large"),
        (422, "fails validation (including non-finite numbers and out-of-range integers)"),
    )
}
Finite = ConfigDict(allow_inf_nan=False)


class GatesIn(BaseModel):
    model_config = Finite
    success: Annotated[str, Field(max_length=16)] = "90%"
    failure: Annotated[str, Field(max_length=16)] = "10%"
    bake_s: Annotated[float, Field(ge=0, le=30 * DAY)] = 0.0
    device_timeout_s: Annotated[float, Field(gt=0, le=7 * DAY)] = 600.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    max_concurrent: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    rate_per_min: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    health: bool = True
    max_error_rate_increase: Annotated[float, Field(gt=0, le=1)] = 0.05
    max_p95_ratio: Annotated[float, Field(gt=1, le=1e9)] = 1.5  # 1e9: the latency gate lifted (simulations)
    max_psi: Annotated[float, Field(gt=0, le=1e9)] = 0.25
    max_conf_drop: Annotated[float, Field(gt=0, le=1)] = 0.10
    health_settle_s: Annotated[float, Field(ge=0, le=DAY)] = 10.0
    min_p95_delta_ms: Annotated[float, Field(ge=0, le=3_600_000)] = HealthGate.min_p95_delta_ms
    health_alpha: Annotated[float, Field(gt=0, lt=0.5)] = HealthGate.alpha
    health_consecutive: Annotated[int, Field(ge=1, le=100)] = HealthGate.consecutive
    health_min_windows: Annotated[int, Field(ge=1, le=100_000)] = HealthGate.min_windows
    health_interval_s: Annotated[float, Field(gt=0, le=DAY)] = HealthGate.eval_interval_s
    health_max_wait_s: Annotated[float, Field(ge=0, le=30 * DAY)] = HealthGate.max_inconclusive_s
    health_clustered: bool = HealthGate.clustered

    def to_gates(self) -> Gates:
        health = HealthGate(
            self.max_error_rate_increase,
            self.max_p95_ratio,
            self.max_psi,
            self.max_conf_drop,
            settle_s=self.health_settle_s,
            min_p95_delta_ms=self.min_p95_delta_ms,
            alpha=self.health_alpha,
            consecutive=self.health_consecutive,
            min_windows=self.health_min_windows,
            eval_interval_s=self.health_interval_s,
            max_inconclusive_s=self.health_max_wait_s,
            clustered=self.health_clustered,
        )
        return Gates(
            Threshold.parse(self.success),
            Threshold.parse(self.failure),
            self.bake_s,
            self.device_timeout_s,
            self.retries,
            self.max_concurrent,
            self.rate_per_min,
            health=health if self.health else None,
        )


class RolloutIn(BaseModel):
    model_config = Finite
    release: str = Field(..., max_length=200, description="NAME@VERSION")
    stages: list[Annotated[str, Field(max_length=16)]] = Field(
        ..., min_length=1, max_length=20, description='e.g. ["5%", "25%", "100%"] or counts'
    )
    selector: str = Field("", max_length=512, description="sku=X,tag=Y")
    approval: bool = Field(False, description="wait for `approve` after every stage but the last")
    gates: GatesIn = Field(default_factory=GatesIn)


Tag = Annotated[str, Field(min_length=1, max_length=64)]


class TagsIn(BaseModel):
    add: list[Tag] = Field([], max_length=64)
    remove: list[Tag] = Field([], max_length=64)


class ReleaseRef(BaseModel):
    release: str = Field(..., max_length=200)


def actor() -> str:
    """The name of the token behind the request being served (set by the access middleware)."""
    who = caller.get()
    return who.name if who else "-"


def create_app(
    service: FleetService, tokens: dict[str, str], *, public_metrics: bool = False, signer: UrlSigner | None = None
) -> FastAPI:
    """The app for one fleet; ``tokens`` maps bootstrap secrets (admins) to the names the audit records."""
    app = FastAPI(title="edgefleet fleet manager", version="1", responses=ERRORS)
    signer = signer or service.signer()
    auth = Authenticator.of(service.store, tokens, signer, service.clock)
    app.add_middleware(AccessMiddleware, auth=auth, public_metrics=public_metrics)
    _error_handlers(app)
    registry = registry_for(service)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(render(registry), media_type="text/plain; version=0.0.4")

    @app.get("/healthz", responses={})
    def healthz() -> dict[str, bool]:
        """Liveness, for load balancers: needs no token and says nothing about the fleet."""
        return {"ok": True}

    router = APIRouter(prefix=API, dependencies=[Security(HTTPBearer(auto_error=False))])

    @router.get("/health")
    def health() -> dict[str, Any]:
        ingest = service.ingest
        return {
            "fleet": service.fleet,
            "devices_in_memory": len(ingest),
            "received": dict(ingest.received),
            "dropped": dict(ingest.dropped),
            "rollout_leader": service.rollout_leader(time.time()),
        }

    _device_routes(router, service)
    _release_routes(router, service)
    _rollout_routes(router, service)
    admin_routes(router, service)
    _trust_routes(router, service)
    capture_routes(router, service)
    app.include_router(router)
    _artifact_route(app, service)
    ui.mount(app, service, auth)  # the console at /ui (fleet/ui/)
    return app


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def _error_handlers(app: FastAPI) -> None:
    """Every error in one format: ``{"error": ..., "code": ...}``."""

    @app.exception_handler(EdgefleetError)
    async def _edgefleet(request: Request, exc: EdgefleetError) -> JSONResponse:
        status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
        return _error(status, str(exc), exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid')}"[:300], "invalid")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http")
        return _error(exc.status_code, str(exc.detail), code)


def device_dict(row: Any) -> dict[str, Any]:
    """A device row with the trust version its latest info reported (None: plain keys or not known)."""
    info = row.info or {}
    return {**row.to_dict(), "trust_version": info.get("trust_version"), "trust_expired": info.get("trust_expired")}


def _trust_routes(router: APIRouter, service: FleetService) -> None:
    @router.get("/trust")
    def trust() -> dict[str, Any]:
        ft = service.fleet_trust
        if ft is None:
            return {"version": None, "release_keys": sorted(service.trust.keys)}
        return describe(ft.metadata, service.clock())

    @router.post("/trust")
    async def push(request: Request) -> dict[str, Any]:
        """Push newer trust metadata (admin): verified as a chain from the version in force, stored, sent."""
        data = await request.body()
        body = Fields(loads_strict(data, max_bytes=MAX_TRUST_BODY, error=ConfigError, what="body"), "body", ConfigError)
        docs = body.array("documents", max_items=MAX_CHAIN)
        if not docs or not all(isinstance(d, dict) for d in docs):
            raise ConfigError("body.documents must be a non-empty list of trust documents")
        return await run_in_threadpool(service.push_trust, [canonical_json(d) for d in docs], actor())


def _device_routes(router: APIRouter, service: FleetService) -> None:
    @router.get("/devices")
    def devices(
        selector: Annotated[str, Query(max_length=512)] = "",
        admission: Annotated[str | None, Query(pattern="^(accepted|pending|rejected)$")] = None,
    ) -> list[dict[str, Any]]:
        return [device_dict(row) for row in service.listed(Selector.parse(selector), admission)]

    @router.get("/devices/{device}")
    def device(device: Annotated[str, PathParam(max_length=64)]) -> dict[str, Any]:
        row = service.store.devices.get(device)
        latest = service.ingest.latest(device)
        rollups = [r.to_dict() for r in service.store.rollups.for_device(device)[-60:]]
        policy = capture_of(service).policies.device_policy(row.id, row.sku, row.tags or [], service.clock())
        shown = {"capture": policy.public() if policy else None}  # the capture policy it holds (token hidden)
        return {**device_dict(row), **shown, "telemetry": latest.telemetry if latest else {}, "rollups": rollups}

    @router.post("/devices/{device}/tags")
    def tag(device: Annotated[str, PathParam(max_length=64)], body: TagsIn) -> dict[str, Any]:
        return {"device": device, "tags": service.store.devices.tag(device, body.add, body.remove, actor())}


BUNDLE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _release_routes(router: APIRouter, service: FleetService) -> None:
    @router.get("/releases")
    def releases() -> list[dict[str, Any]]:
        return [row.public() for row in service.store.releases.all()]

    @router.post("/releases", status_code=201, openapi_extra=BUNDLE_BODY)
    async def add_release(request: Request) -> dict[str, Any]:
        """Upload a signed bundle: streamed to a file next to the artifacts, verified there, then kept."""
        tmp, sha = await _receive_file(request, service.artifacts)
        try:
            row = await run_in_threadpool(service.add_release_file, tmp, sha, actor())
        finally:
            tmp.unlink(missing_ok=True)
        return row.public()

    @router.get("/releases/{ref}")
    def release(ref: Annotated[str, PathParam(max_length=200)]) -> dict[str, Any]:
        return service.release(ref).public()

    @router.get("/releases/{ref}/check")
    def check(
        ref: Annotated[str, PathParam(max_length=200)], selector: Annotated[str, Query(max_length=512)] = ""
    ) -> list[dict[str, Any]]:
        return [check.to_dict() for check in service.check_release(ref, selector)]


async def _receive_file(request: Request, directory: Path) -> tuple[Path, str]:
    """The request body in a temporary file in ``directory`` (never all in memory) and its sha256.

    Raises: TooLargeError (the body went over ``MAX_BUNDLE``; the middleware cut it off).
    """
    fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".efb", dir=directory)
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BUNDLE:
                    raise TooLargeError(f"bundle is larger than {MAX_BUNDLE} bytes")
                digest.update(chunk)
                fh.write(chunk)  # small blocking writes: the chunks are the server's 64 KiB reads
            os.fsync(fh.fileno())
    except ClientDisconnect:
        Path(name).unlink(missing_ok=True)
        raise TooLargeError(f"bundle upload cut off (over {MAX_BUNDLE} bytes or the client left)") from None
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name), digest.hexdigest()


def _artifact_route(app: FastAPI, service: FleetService) -> None:
    cache = ArtifactCache()
    octets = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    responses: dict[int | str, dict[str, Any]] = {
        200: {**octets, "description": "the artifact"},
        206: {**octets, "description": "the byte range asked for"},
        416: {"description": "unsatisfiable range"},
    }

    @app.head("/artifacts/{name}", include_in_schema=False)
    @app.get("/artifacts/{name}", responses=responses, response_class=Response)
    async def artifact(
        name: Annotated[str, PathParam(max_length=80)],
        range_: Annotated[str | None, Header(alias="range", max_length=100)] = None,
    ) -> Response:
        """An artifact with a viewer token, or by a device with the signed URL of its ``cmd/deploy``."""
        sha = name.removesuffix(".efb")
        if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
            raise NotFoundError(f"no artifact {name[:80]}")
        data = cache.get(sha)
        if data is None:  # the store and the disk are read in a worker thread, once per artifact
            path = await run_in_threadpool(service.artifact_path, sha)
            data = await run_in_threadpool(cache.load, sha, path)
            if data is None:
                return ranged(path, range_)
        return ranged(data, range_)


def _rollout_routes(router: APIRouter, service: FleetService) -> None:
    @router.post("/rollouts", status_code=201)
    def start(body: RolloutIn) -> dict[str, Any]:
        req = RolloutRequest(body.release, tuple(body.stages), body.selector, body.gates.to_gates(), body.approval)
        return service.status(service.start_rollout(req, actor())).to_dict()

    @router.get("/rollouts")
    def rollouts(release: Annotated[str | None, Query(max_length=200)] = None) -> list[dict[str, Any]]:
        rows = service.store.rollouts.find(release=release)
        return [{k: v for k, v in row.to_dict().items() if k != "spec"} for row in rows]

    @router.get("/rollouts/{rollout_id}")
    def status(rollout_id: ROLLOUT_ID) -> dict[str, Any]:
        return service.status(rollout_id).to_dict()

    @router.get("/rollouts/{rollout_id}/deployments")
    def deployments(rollout_id: ROLLOUT_ID) -> list[dict[str, Any]]:
        service.store.rollouts.get(rollout_id)
        return [row.to_dict() for row in service.store.deployments.for_rollout(rollout_id)]

    @router.get("/rollouts/{rollout_id}/audit")
    def audit(rollout_id: ROLLOUT_ID, limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, Any]]:
        return [row.to_dict() for row in service.store.audit.log(f"rollout/{rollout_id}", limit)]

    @router.post("/rollouts/{rollout_id}/{verb}")
    def command(rollout_id: ROLLOUT_ID, verb: Annotated[str, PathParam(max_length=20)]) -> dict[str, Any]:
        if verb not in ("pause", "resume", "abort", "approve"):
            raise NotFoundError(f"no rollout command {verb[:20]!r}")
        return service.command(rollout_id, verb, actor()).to_dict()

    @router.post("/rollback")
    def rollback(body: ReleaseRef) -> dict[str, Any]:
        return {"release": body.release, "rollouts": service.rollback_release(body.release, actor())}


__all__ = ["ArtifactCache", "byte_range", "create_app", "ranged"]
