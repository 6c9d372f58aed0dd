"""The console's forms (POST): sign in, sign out, start a rollout, and pause / resume / approve / abort /
roll back one. Each checks the session, its CSRF token and the role, then calls the service the API calls,
with the caller set so the audit log records who did it, from where and with which token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from fleet.access import Principal, Role, caller, hash_secret
from fleet.errors import AuthError, FleetError, ForbiddenError
from fleet.store import audit
from fleet.ui.console import PREFIX, Console, RefusedError, Viewer
from fleet.ui.forms import rollout_request
from fleet.ui.pages import _local
from fleet.ui.session import COOKIE, LOGIN_COOKIE, same

T = TypeVar("T")
FORM_FIELDS = 30  # fields a console form has at most
VERBS = ("pause", "resume", "abort", "approve", "rollback")
STATUS = {"not-found": 404, "conflict": 409, "forbidden": 403}  # of a fleet error's code; else 400
DeviceId = Annotated[str, PathParam(max_length=64, pattern="^[a-z0-9-]+$")]


async def form_of(request: Request) -> dict[str, str]:
    """The URL-encoded form (the body is capped by the access middleware). Parsed with the standard
    library: the console's forms have no files, so python-multipart is not needed."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise RefusedError(415, "invalid", "the console takes application/x-www-form-urlencoded forms")
    body = (await request.body()).decode("utf-8", "replace")
    try:
        fields = parse_qs(body, max_num_fields=FORM_FIELDS, strict_parsing=False)
    except ValueError:
        raise RefusedError(400, "invalid", f"a form has at most {FORM_FIELDS} fields") from None
    return {k: v[-1] for k, v in fields.items()}


async def checked(console: Console, request: Request, need: Role) -> tuple[Viewer, dict[str, str]]:
    """The viewer and form of a console POST. Raises: RefusedError (no session 401, bad CSRF or origin 403,
    role too low 403, each audited)."""
    form = await form_of(request)
    try:
        who = console.viewer(request)
    except Exception:
        raise RefusedError(401, "unauthorized", "sign in first: no valid console session") from None
    target = f"POST {request.url.path}"
    if not same(form.get("csrf"), who.session.csrf) or _foreign(request.headers.get("origin"), request):
        console.auth.refused(who.principal, target, _csrf_error())
        raise RefusedError(403, "csrf", "refused: the form's CSRF token is missing or wrong; reload the page")
    if not who.role.allows(need):
        message = f"token {who.name} ({who.role}) may not do this: it needs the {need} role"
        console.auth.refused(who.principal, target, ForbiddenError(message))
        raise RefusedError(403, "forbidden", message)
    return who, form


def _csrf_error() -> ForbiddenError:
    """Audited as ``auth.csrf``."""
    exc = ForbiddenError("missing or wrong CSRF token (or a foreign origin)")
    exc.code = "csrf"
    return exc


def _foreign(origin: str | None, request: Request) -> bool:
    """Whether a browser says the form came from another site. Host names only: behind a TLS-terminating
    proxy the browser's ``https`` origin meets our ``http`` scheme."""
    return bool(origin) and urlsplit(origin or "").netloc != request.headers.get("host", "")


async def as_caller(who: Principal, fn: Callable[[], T]) -> T:
    """``fn()`` in a worker thread with ``who`` as the caller the audit records; fleet errors become a page."""
    token = caller.set(who)
    try:
        return await run_in_threadpool(fn)
    except FleetError as exc:
        raise RefusedError(STATUS.get(exc.code, 400), exc.code, str(exc)) from None
    finally:
        caller.reset(token)


def action_routes(app: FastAPI, console: Console) -> None:
    service = console.service
    _device_actions(app, console)

    @app.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await form_of(request)
        if not same(form.get("nonce"), request.cookies.get(LOGIN_COOKIE)):
            raise RefusedError(403, "csrf", "refused: the sign-in form is stale or forged; reload it")
        source = request.client.host if request.client else ""
        digest = hash_secret(form.get("token", "").strip())
        try:
            who = await run_in_threadpool(console.auth.by_hash, digest, source)
        except AuthError as exc:
            await run_in_threadpool(console.auth.refused, Principal("-", None, source), "POST /ui/login", exc)
            raise RefusedError(401, exc.code, f"sign-in refused: {exc}") from None
        value, _ = console.codec.issue(digest, service.clock())
        response = RedirectResponse(_local(form.get("next", PREFIX)), status_code=303)
        secure = request.url.scheme == "https"
        response.set_cookie(COOKIE, value, httponly=True, samesite="strict", secure=secure, path="/ui")
        response.delete_cookie(LOGIN_COOKIE, path="/ui")
        await as_caller(who, lambda: _audit(console, who.name, "ui.sign-in", "ui"))
        return response

    @app.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        await checked(console, request, Role.VIEWER)
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    @app.post("/ui/rollouts", include_in_schema=False)
    async def start(request: Request) -> Response:
        who, form = await checked(console, request, Role.OPERATOR)
        req = await as_caller(who.principal, lambda: rollout_request(form))
        rid = await as_caller(who.principal, lambda: service.start_rollout(req, who.name))
        return RedirectResponse(f"{PREFIX}/rollouts/{rid}", status_code=303)

    @app.post("/ui/rollouts/{rollout_id}/{verb}", include_in_schema=False)
    async def command(
        request: Request,
        rollout_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)],
        verb: Annotated[str, PathParam(max_length=20)],
    ) -> Response:
        who, _ = await checked(console, request, Role.OPERATOR)
        if verb not in VERBS:
            raise RefusedError(404, "not-found", f"no rollout command {verb[:20]!r}")
        await as_caller(who.principal, lambda: service.command(rollout_id, verb, who.name))
        return RedirectResponse(f"{PREFIX}/rollouts/{rollout_id}", status_code=303)


def _device_actions(app: FastAPI, console: Console) -> None:
    service = console.service

    @app.post("/ui/devices/{device}/tags", include_in_schema=False)
    async def tag(request: Request, device: DeviceId) -> Response:
        """Add and remove tags (operator), as ``POST /api/v1/devices/ID/tags``."""
        who, form = await checked(console, request, Role.OPERATOR)
        add, remove = tag_list(form.get("add", "")), tag_list(form.get("remove", ""))
        await as_caller(who.principal, lambda: service.store.devices.tag(device, add, remove, who.name))
        return RedirectResponse(f"{PREFIX}/devices/{device}", status_code=303)

    @app.post("/ui/devices/{device}/admission/{verb}", include_in_schema=False)
    async def admission(
        request: Request, device: DeviceId, verb: Annotated[str, PathParam(pattern="^(accept|reject)$")]
    ) -> Response:
        """Accept or reject the device (admin), as ``POST /api/v1/devices/admission/VERB``."""
        who, _ = await checked(console, request, Role.ADMIN)
        state = "accepted" if verb == "accept" else "rejected"
        await as_caller(who.principal, lambda: service.store.devices.admit(service.fleet, [device], state, who.name))
        return RedirectResponse(f"{PREFIX}/devices/{device}", status_code=303)


def tag_list(text: str) -> list[str]:
    """``"a, b"`` → ["a", "b"]: at most 64 tags of 1 to 64 characters, as the API's ``TagsIn``.

    Raises: RefusedError (400 invalid).
    """
    tags = [t.strip() for t in text.split(",") if t.strip()]
    if len(tags) > 64 or any(len(t) > 64 for t in tags):
        raise RefusedError(400, "invalid", "at most 64 tags of at most 64 characters each")
    return tags


def _audit(console: Console, actor: str, action: str, target: str) -> None:
    with console.service.store.db.tx() as conn:
        audit.record(conn, actor, action, target)
