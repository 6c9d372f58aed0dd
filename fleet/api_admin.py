"""Admin and audit routes: tokens (create, list, revoke), device admission, the audit log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from fleet.access import NAME_RE, Role, caller, hash_secret, new_secret, parse_duration
from fleet.errors import InvalidRequestError
from fleet.service import FleetService


class TokenIn(BaseModel):
    name: str = Field(..., max_length=64, description="[a-z0-9][a-z0-9._-]*")
    role: Role
    expires: str | None = Field(None, max_length=12, description="e.g. 30d, 12h (default: never)")


class AdmissionIn(BaseModel):
    devices: list[Annotated[str, Field(max_length=64)]] = Field([], max_length=10_000)
    all_pending: bool = Field(False, description="every pending device instead of a list")


def _actor() -> str:
    who = caller.get()
    return who.name if who else "-"


def admin_routes(router: APIRouter, service: FleetService) -> None:
    """Register the routes on ``router`` (under /api/v1; the access middleware requires admin for tokens
    and admission, viewer for the audit log)."""

    @router.post("/tokens", status_code=201)
    def create_token(body: TokenIn) -> dict[str, Any]:
        """A new token; the answer holds its secret, which the server keeps only hashed."""
        if not NAME_RE.fullmatch(body.name):
            raise InvalidRequestError(f"token name {body.name[:64]!r} must match {NAME_RE.pattern}")
        now = service.clock()
        expires_at = now + parse_duration(body.expires) if body.expires else None
        secret = new_secret()
        row = service.store.tokens.create(body.name, body.role, hash_secret(secret), expires_at, _actor(), now)
        return {**row.public(), "secret": secret}

    @router.get("/tokens")
    def tokens() -> list[dict[str, Any]]:
        return [row.public() for row in service.store.tokens.all()]

    @router.post("/tokens/{name}/revoke")
    def revoke(name: Annotated[str, PathParam(max_length=64)]) -> dict[str, Any]:
        return service.store.tokens.revoke(name, _actor(), service.clock()).public()

    @router.post("/devices/admission/{verb}")
    def admission(verb: Annotated[str, PathParam(pattern="^(accept|reject)$")], body: AdmissionIn) -> dict[str, Any]:
        """Accept or reject devices (``pending`` under ``serve --admission manual``)."""
        if body.all_pending == bool(body.devices):
            raise InvalidRequestError("give device ids or all_pending, not both nor neither")
        state = "accepted" if verb == "accept" else "rejected"
        ids = service.store.devices.admit(service.fleet, None if body.all_pending else body.devices, state, _actor())
        return {"admission": state, "devices": ids}

    @router.get("/audit")
    def audit(
        since: Annotated[float | None, Query(ge=0, le=1e11, allow_inf_nan=False)] = None,
        actor: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
    ) -> list[dict[str, Any]]:
        """The newest entries first: every mutating call and every refused one."""
        return [row.to_dict() for row in service.store.audit.log(None, limit, since=since, actor=actor)]
