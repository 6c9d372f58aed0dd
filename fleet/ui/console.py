"""What every console page shares: the signed-in viewer, rendering with security headers, refusals as pages."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from fleet.access import Principal, Role
from fleet.api_access import Authenticator
from fleet.errors import AuthError
from fleet.service import FleetService
from fleet.ui.queries import ConsoleQueries
from fleet.ui.session import COOKIE, Session, SessionCodec

HERE = Path(__file__).resolve().parent
PREFIX = "/ui"
HTMX = "htmx-2.0.11.min.js"  # fleet/ui/static/VENDORED.md: where from, version, hash
HTMX_SRI = "sha384-2OatzQy1H+Zd/IIrjr1TcuDGqLXeHhbooAyJY1KdQMKnr4LZ22k31GBLdYKHmVjg"
# (label, path)
NAV: list[tuple[str, str]] = [
    ("Overview", "/ui"),
    ("Devices", "/ui/devices"),
    ("Releases", "/ui/releases"),
    ("Rollouts", "/ui/rollouts"),
    ("Captured data", "/ui/capture"),
    ("Audit", "/ui/audit"),
]
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class SignInRequiredError(Exception):
    """No valid session: reading pages redirect to the sign-in form."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class RefusedError(Exception):
    """A request the console refuses: answered as a page with its status and one-line reason code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Viewer:
    """The signed-in operator: the token's principal and the session."""

    principal: Principal
    session: Session

    @property
    def name(self) -> str:
        return self.principal.name

    @property
    def role(self) -> Role:
        return self.principal.role or Role.VIEWER

    @property
    def can_operate(self) -> bool:
        return self.role.allows(Role.OPERATOR)

    @property
    def is_admin(self) -> bool:
        return self.role.allows(Role.ADMIN)


@dataclass
class Console:
    service: FleetService
    auth: Authenticator
    codec: SessionCodec
    env: jinja2.Environment
    queries: ConsoleQueries

    @classmethod
    def create(cls, service: FleetService, auth: Authenticator) -> Console:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=jinja2.StrictUndefined,
        )
        env.filters["when"] = _when
        env.filters["urlq"] = lambda v: quote(str(v), safe="")
        codec = SessionCodec.derived(service.store.settings.signing_key())
        return cls(service, auth, codec, env, ConsoleQueries(service.store.db))

    def install(self, app: FastAPI) -> None:
        app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="ui-static")

        @app.exception_handler(SignInRequiredError)
        async def _sign_in(request: Request, exc: SignInRequiredError) -> Response:
            where = f"{PREFIX}/login?next={quote(exc.next_url, safe='')}"
            if request.headers.get("hx-request"):  # a live fragment: send the whole page to sign-in, not the div
                return Response(status_code=204, headers={"HX-Redirect": where})
            return RedirectResponse(where, status_code=303)

        @app.exception_handler(RefusedError)
        async def _refused(request: Request, exc: RefusedError) -> Response:
            return self.render(request, "refused.html", None, status=exc.status, code=exc.code, message=exc.message)

    def viewer(self, request: Request) -> Viewer:
        """The signed-in viewer. Raises: SignInRequiredError (no, expired or revoked session)."""
        session = self.codec.read(request.cookies.get(COOKIE), self.service.clock())
        if session is None:
            raise SignInRequiredError(_here(request))
        source = request.client.host if request.client else ""
        try:
            return Viewer(self.auth.by_hash(session.token_hash, source), session)
        except AuthError:
            raise SignInRequiredError(_here(request)) from None

    def render(self, request: Request, template: str, who: Viewer | None, status: int = 200, **ctx: Any) -> Response:
        """The page, with the security headers and its render time (``Server-Timing``, read by the bench)."""
        started = time.perf_counter()
        html = self.env.get_template(template).render(
            who=who, nav=NAV, path=request.url.path, htmx=f"{PREFIX}/static/{HTMX}", htmx_sri=HTMX_SRI, **ctx
        )
        response = HTMLResponse(html, status_code=status, headers=HEADERS)
        started = request.scope.get("edgefleet.started", started)
        response.headers["Server-Timing"] = f"render;dur={(time.perf_counter() - started) * 1000:.2f}"
        return response


def started(request: Request) -> None:
    """Mark when serving a page began (its ``Server-Timing`` then covers the queries too)."""
    request.scope["edgefleet.started"] = time.perf_counter()


def _here(request: Request) -> str:
    if request.method != "GET":
        return PREFIX
    path = request.url.path.removesuffix("/live")  # a live fragment's page
    return path + (f"?{request.url.query}" if request.url.query else "")


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
