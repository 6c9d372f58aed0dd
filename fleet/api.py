"""The HTTP API (FastAPI; OpenAPI at ``/docs`` and ``/openapi.json``): devices, releases, rollouts,
artifact downloads with Range, and ``/metrics``. Mutating calls need ``Authorization: Bearer TOKEN``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from device_agent.errors import BundleError, ConfigError, EdgefleetError
from fleet.errors import AuthError, ConflictError, NotFoundError
from fleet.metrics import registry_for, render
from fleet.rollout.model import Gates, HealthGate, Selector, Threshold
from fleet.service import FleetService, RolloutRequest

API = "/api/v1"
MAX_BUNDLE = 1 << 30  # bytes accepted by `releases add`
STATUS = {NotFoundError: 404, ConflictError: 409, AuthError: 401, BundleError: 422, ConfigError: 400}


class GatesIn(BaseModel):
    success: str = "90%"
    failure: str = "10%"
    bake_s: Annotated[float, Field(ge=0)] = 0.0
    device_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    max_concurrent: Annotated[int, Field(ge=1)] = 1000
    rate_per_min: Annotated[int, Field(ge=0)] = 0
    health: bool = True
    max_error_rate_increase: Annotated[float, Field(gt=0, le=1)] = 0.05
    max_p95_ratio: Annotated[float, Field(gt=1)] = 1.5
    max_psi: Annotated[float, Field(gt=0)] = 0.25
    max_conf_drop: Annotated[float, Field(gt=0, le=1)] = 0.10
    health_settle_s: Annotated[float, Field(ge=0)] = 10.0
    min_p95_delta_ms: Annotated[float, Field(ge=0)] = HealthGate.min_p95_delta_ms
    health_alpha: Annotated[float, Field(gt=0, lt=0.5)] = HealthGate.alpha
    health_consecutive: Annotated[int, Field(ge=1, le=100)] = HealthGate.consecutive
    health_min_windows: Annotated[int, Field(ge=1, le=100_000)] = HealthGate.min_windows
    health_interval_s: Annotated[float, Field(gt=0)] = HealthGate.eval_interval_s
    health_max_wait_s: Annotated[float, Field(ge=0)] = HealthGate.max_inconclusive_s

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
    release: str = Field(..., description="NAME@VERSION")
    stages: list[str] = Field(..., description='e.g. ["5%", "25%", "100%"] or counts')
    selector: str = Field("", description="sku=X,tag=Y")
    approval: bool = Field(False, description="wait for `approve` after every stage but the last")
    gates: GatesIn = Field(default_factory=GatesIn)


class TagsIn(BaseModel):
    add: list[str] = []
    remove: list[str] = []


class ReleaseRef(BaseModel):
    release: str


def _tokens(tokens: dict[str, str]) -> Any:
    def require(authorization: Annotated[str | None, Header()] = None) -> str:
        """The actor behind a valid bearer token. Raises: AuthError."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthError("missing bearer token: pass --token to fleetctl or set FLEETCTL_TOKEN")
        given = authorization[7:].strip()
        for secret, actor in tokens.items():
            if secrets.compare_digest(given.encode(), secret.encode()):
                return actor
        raise AuthError("invalid token")

    return require


def create_app(service: FleetService, tokens: dict[str, str]) -> FastAPI:
    """The app for one fleet; ``tokens`` maps secrets to the actor names the audit log records."""
    app = FastAPI(title="edgefleet fleet manager", version="1")
    actor = Depends(_tokens(tokens))
    registry = registry_for(service)

    @app.exception_handler(EdgefleetError)
    async def _error(request: Request, exc: EdgefleetError) -> JSONResponse:
        status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
        return JSONResponse({"error": str(exc), "code": exc.code}, status_code=status)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(render(registry), media_type="text/plain; version=0.0.4")

    @app.get(f"{API}/health")
    def health() -> dict[str, Any]:
        ingest = service.ingest
        leader = service.rollout_leader(time.time())
        return {
            "fleet": service.fleet,
            "devices_in_memory": len(ingest),
            "received": dict(ingest.received),
            "dropped": dict(ingest.dropped),
            "rollout_leader": leader,
        }

    _device_routes(app, service, actor)
    _release_routes(app, service, actor)
    _rollout_routes(app, service, actor)
    return app


def _device_routes(app: FastAPI, service: FleetService, actor: Any) -> None:
    @app.get(f"{API}/devices")
    def devices(selector: str = "") -> list[dict[str, Any]]:
        return [row.to_dict() for row in service.targeted(Selector.parse(selector))]

    @app.get(f"{API}/devices/{{device}}")
    def device(device: str) -> dict[str, Any]:
        row = service.store.devices.get(device)
        latest = service.ingest.latest(device)
        rollups = [r.to_dict() for r in service.store.rollups.for_device(device)[-60:]]
        return {**row.to_dict(), "telemetry": latest.telemetry if latest else {}, "rollups": rollups}

    @app.post(f"{API}/devices/{{device}}/tags")
    def tag(device: str, body: TagsIn, who: str = actor) -> dict[str, Any]:
        return {"device": device, "tags": service.store.devices.tag(device, body.add, body.remove, who)}


def _release_routes(app: FastAPI, service: FleetService, actor: Any) -> None:
    @app.get(f"{API}/releases")
    def releases() -> list[dict[str, Any]]:
        return [row.to_dict() for row in service.store.releases.all()]

    @app.post(f"{API}/releases", status_code=201)
    async def add_release(request: Request, who: str = actor) -> dict[str, Any]:
        data = await request.body()
        if len(data) > MAX_BUNDLE:
            raise ConflictError(f"bundle is larger than {MAX_BUNDLE} bytes")
        return service.add_release(data, who).to_dict()

    @app.get(f"{API}/releases/{{ref}}")
    def release(ref: str) -> dict[str, Any]:
        return service.release(ref).to_dict()

    @app.get(f"{API}/releases/{{ref}}/check")
    def check(ref: str, selector: str = "") -> list[dict[str, Any]]:
        return [check.to_dict() for check in service.check_release(ref, selector)]

    cache = ArtifactCache()

    @app.head("/artifacts/{name}", include_in_schema=False)
    @app.get("/artifacts/{name}")
    async def artifact(name: str, range_: Annotated[str | None, Header(alias="range")] = None) -> Response:
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


def _rollout_routes(app: FastAPI, service: FleetService, actor: Any) -> None:
    @app.post(f"{API}/rollouts", status_code=201)
    def start(body: RolloutIn, who: str = actor) -> dict[str, Any]:
        req = RolloutRequest(body.release, tuple(body.stages), body.selector, body.gates.to_gates(), body.approval)
        return service.status(service.start_rollout(req, who)).to_dict()

    @app.get(f"{API}/rollouts")
    def rollouts(release: str | None = None) -> list[dict[str, Any]]:
        rows = service.store.rollouts.find(release=release)
        return [{k: v for k, v in row.to_dict().items() if k != "spec"} for row in rows]

    @app.get(f"{API}/rollouts/{{rollout_id}}")
    def status(rollout_id: int) -> dict[str, Any]:
        return service.status(rollout_id).to_dict()

    @app.get(f"{API}/rollouts/{{rollout_id}}/deployments")
    def deployments(rollout_id: int) -> list[dict[str, Any]]:
        service.store.rollouts.get(rollout_id)
        return [row.to_dict() for row in service.store.deployments.for_rollout(rollout_id)]

    @app.get(f"{API}/rollouts/{{rollout_id}}/audit")
    def audit(rollout_id: int, limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, Any]]:
        return [row.to_dict() for row in service.store.audit.log(f"rollout/{rollout_id}", limit)]

    @app.post(f"{API}/rollouts/{{rollout_id}}/{{verb}}")
    def command(rollout_id: int, verb: str, who: str = actor) -> dict[str, Any]:
        if verb not in ("pause", "resume", "abort", "approve"):
            raise NotFoundError(f"no rollout command {verb[:20]!r}")
        return service.command(rollout_id, verb, who).to_dict()

    @app.post(f"{API}/rollback")
    def rollback(body: ReleaseRef, who: str = actor) -> dict[str, Any]:
        return {"release": body.release, "rollouts": service.rollback_release(body.release, who)}


class ArtifactCache:
    """Artifacts are immutable (named by their sha256): small ones are kept in memory, so thousands of
    devices downloading a release cost no store query, file read or thread hop each."""

    def __init__(self, max_bytes: int = 256 << 20, max_artifact: int = 16 << 20) -> None:
        self.max_bytes, self.max_artifact = max_bytes, max_artifact
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha: str) -> bytes | None:
        with self._lock:
            data = self._data.get(sha)
            if data is not None:
                self._data.move_to_end(sha)
            return data

    def load(self, sha: str, path: Path) -> bytes | None:
        """Read ``path`` into the cache if it is small enough; None for a large one (stream it)."""
        if path.stat().st_size > self.max_artifact:
            return None
        data = path.read_bytes()
        with self._lock:
            self._data[sha] = data
            while sum(len(d) for d in self._data.values()) > self.max_bytes:
                self._data.popitem(last=False)
        return data


BASE_HEADERS = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end) of the one range asked for (``bytes=A-B``, ``bytes=A-``, ``bytes=-N``); None if unsatisfiable."""
    unit, _, spec = header.partition("=")
    start_s, dash, end_s = spec.strip().partition("-")
    try:
        if unit.strip() != "bytes" or not dash or "," in spec:
            return None
        if start_s:
            start, end = int(start_s), min(int(end_s) if end_s else size - 1, size - 1)
        else:
            start, end = max(0, size - int(end_s)), size - 1
    except ValueError:
        return None
    return None if start < 0 or start > end or start >= size else (start, end)


def _unsatisfiable(size: int) -> Response:
    return Response(status_code=416, headers={**BASE_HEADERS, "Content-Range": f"bytes */{size}"})


def ranged(source: Path | bytes, header: str | None) -> Response:
    """An artifact (a file, or its bytes held in memory), or the one byte range asked for: 206 or 416.

    A file is streamed in chunks from a plain generator (no lazily imported async file layer).
    """
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    span = byte_range(header, size) if header else None
    if header and span is None:
        return _unsatisfiable(size)
    start, end = span or (0, size - 1)
    headers = {**BASE_HEADERS, "Content-Length": str(end - start + 1)}
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    status = 206 if span is not None else 200
    if isinstance(source, bytes):
        return Response(source[start : end + 1], status_code=status, headers=headers)
    return StreamingResponse(_chunks(source, start, end - start + 1), status_code=status, headers=headers)


def _chunks(path: Path, start: int, length: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as fh:
        fh.seek(start)
        while length > 0 and (data := fh.read(min(chunk, length))):
            length -= len(data)
            yield data
