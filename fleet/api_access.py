"""Access control of the HTTP API, as one ASGI middleware that runs before any route reads a byte of the
body: which role a call needs, the caller's token (hashed, looked up in the store on every call so a
revocation holds at once in every process), signed artifact URLs, and the body size limit.

A middleware, not FastAPI dependencies, because FastAPI reads and parses a route's body before it
resolves the route's dependencies: a 400 MiB body with no token would be read (and malformed JSON
answered 422) before the token was checked.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool

from device_agent.bundle.trust import MAX_CHAIN, MAX_TRUST_BYTES
from fleet.access import Principal, Role, UrlSigner, caller, hash_secret, same_hash
from fleet.errors import AuthError, FleetError, ForbiddenError, TooLargeError
from fleet.store import Store

API = "/api/v1"
PUBLIC = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect"})
UI = "/ui"  # the console checks its own session cookie (fleet/ui/session.py), not a bearer token
MAX_JSON = 64 << 10  # bytes of a JSON request body
MAX_BUNDLE = 1 << 30  # bytes of a bundle upload (POST /api/v1/releases)
MAX_TRUST_BODY = MAX_CHAIN * MAX_TRUST_BYTES + 1024  # bytes of a trust push: a chain of trust documents
ADMIN_PREFIXES = (f"{API}/tokens", f"{API}/devices/admission", f"{API}/trust", f"{API}/capture/purge")
DEVICE_UPLOAD = f"{API}/capture/upload"  # devices authorize with their upload token (fleet.api_capture)
MAX_CAPTURE_UPLOAD = 8 << 20  # bytes of one capture upload (fleet.capture.samples.MAX_UPLOAD)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def required_role(method: str, path: str, *, public_metrics: bool = False) -> Role | None:
    """The least role a call needs; None for a public one. Artifacts need a viewer or a signed URL."""
    if (
        path in PUBLIC
        or (path == "/metrics" and public_metrics)
        or path == UI
        or path.startswith(f"{UI}/")
        or (method, path) == ("POST", DEVICE_UPLOAD)
    ):
        return None
    if path.startswith(f"{API}/tokens"):
        return Role.ADMIN  # reading the token list too
    if method in ("GET", "HEAD", "OPTIONS"):
        return Role.VIEWER
    return Role.ADMIN if path.startswith(ADMIN_PREFIXES) else Role.OPERATOR


def body_limit(method: str, path: str) -> int:
    """Bytes the request body may have."""
    if method == "POST" and path == f"{API}/trust":
        return MAX_TRUST_BODY
    if method == "POST" and path == DEVICE_UPLOAD:
        return MAX_CAPTURE_UPLOAD
    return MAX_BUNDLE if (method, path) == ("POST", f"{API}/releases") else MAX_JSON


AUDITED_REFUSALS = 30  # refused calls audited per client address and minute; more are only counted


@dataclass
class Authenticator:
    """Checks a bearer token: the bootstrap ones given to ``serve`` (admins, hashed in memory) or the store's.

    Refusals are audited, at most ``AUDITED_REFUSALS`` per address and minute, so a flood of bad tokens
    cannot fill the store; ``unaudited`` counts the rest.
    """

    store: Store
    bootstrap: dict[str, str]  # hash of the secret -> token name
    signer: UrlSigner
    clock: Callable[[], float]
    unaudited: int = 0
    _refusals: dict[str, int] = field(default_factory=dict)  # per address, in the minute ``_minute``
    _minute: int = -1

    @classmethod
    def of(cls, store: Store, secrets_: dict[str, str], signer: UrlSigner, clock: Callable[[], float]) -> Authenticator:
        """``secrets_`` maps bootstrap secrets to names; only their hashes are kept."""
        return cls(store, {hash_secret(s): name for s, name in secrets_.items()}, signer, clock)

    def principal(self, authorization: str | None, source: str) -> Principal:
        """The caller behind a bearer token. Raises: AuthError (missing, unknown, expired, revoked)."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthError("missing bearer token: pass --token to fleetctl or set FLEETCTL_TOKEN")
        return self.by_hash(hash_secret(authorization[7:].strip()), source)

    def by_hash(self, digest: str, source: str) -> Principal:
        """The caller behind a token's hash (the console's session holds it). Raises: AuthError."""
        for known, name in self.bootstrap.items():
            if same_hash(digest, known):
                return Principal(name, Role.ADMIN, source)
        row = self.store.tokens.by_hash(digest)
        if row is None or not same_hash(digest, row.hash):
            raise AuthError("invalid token")
        if row.revoked_at is not None:
            raise AuthError(f"token {row.name} is revoked")
        if row.expires_at is not None and row.expires_at <= self.clock():
            raise AuthError(f"token {row.name} has expired")
        return Principal(row.name, Role(row.role), source)

    def authorize(self, need: Role, scope: Scope, headers: dict[str, str], source: str) -> Principal | None:
        """The caller if it may make this call (None for a device with a valid signed URL).

        Raises: AuthError (401), ForbiddenError (403); each refusal is audited.
        """
        path = scope["path"]
        who: Principal | None = None
        try:
            if path.startswith("/artifacts/") and "authorization" not in headers:
                self._signed(path, scope.get("query_string", b"").decode("latin-1"))
                return None
            who = self.principal(headers.get("authorization"), source)
            if who.role is None or not who.role.allows(need):
                raise ForbiddenError(f"token {who.name} ({who.role}) may not do this: it needs the {need} role")
        except AuthError as exc:
            self.refused(who or Principal("-", None, source), f"{scope['method']} {path}", exc)
            raise
        return who

    def refused(self, who: Principal, target: str, exc: AuthError) -> None:
        """Audit a refusal (at most ``AUDITED_REFUSALS`` per address and minute)."""
        if self._may_audit(who.source):
            self.store.audit.refused(who, f"auth.{exc.code}", target, str(exc))

    def _may_audit(self, source: str) -> bool:
        minute = int(self.clock() // 60)
        if minute != self._minute or len(self._refusals) > 10_000:
            self._refusals.clear()  # a new minute (or too many addresses): count afresh
            self._minute = minute
        self._refusals[source] = count = self._refusals.get(source, 0) + 1
        if count > AUDITED_REFUSALS:
            self.unaudited += 1
            return False
        return True

    def _signed(self, path: str, query: str) -> None:
        params = dict(parse_qsl(query))
        if not params:
            raise AuthError("an artifact needs a signed URL (from cmd/deploy) or a bearer token")
        sha = path.removeprefix("/artifacts/").removesuffix(".efb")
        reason = self.signer.check(sha, params, self.clock())
        if reason is not None:
            raise ForbiddenError(f"artifact URL refused: {reason}")


def error_body(exc: FleetError) -> bytes:
    return json.dumps({"error": str(exc), "code": exc.code}).encode()


async def respond(send: Send, status: int, exc: FleetError) -> None:
    """Answer with the API's error format and close (the unread body is never read)."""
    body = error_body(exc)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AccessMiddleware:
    """Refuse before reading: a body over its limit (413, by Content-Length; a chunked body is counted and
    cut off), a call without the role it needs (401/403). Then serve with ``caller`` set for the audit."""

    def __init__(self, app: ASGIApp, auth: Authenticator, public_metrics: bool = False) -> None:
        self.app, self.auth, self.public_metrics = app, auth, public_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        source = (scope.get("client") or ("", 0))[0]
        who = None
        need = required_role(method, path, public_metrics=self.public_metrics)
        if need is not None:
            try:
                who = await run_in_threadpool(self.auth.authorize, need, scope, headers, source)
            except AuthError as exc:
                await respond(send, 403 if isinstance(exc, ForbiddenError) else 401, exc)
                return
        limit = body_limit(method, path)
        declared = headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > limit:
            await respond(send, 413, TooLargeError(f"request body over {limit} bytes (or no valid Content-Length)"))
            return
        if "content-length" not in headers and limit == MAX_JSON:  # a chunked JSON body: small, so read it here
            messages = await _read_capped(receive, limit)
            if messages is None:
                await respond(send, 413, TooLargeError(f"request body over {limit} bytes"))
                return
            receive = _replay(messages, receive)
        token = caller.set(who)
        try:
            await self.app(scope, _capped(receive, limit), send)
        finally:
            caller.reset(token)


def _capped(receive: Receive, limit: int) -> Receive:
    """``receive`` that ends the body (as a client disconnect) once it exceeds ``limit`` bytes."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                return {"type": "http.disconnect"}
        return message

    return wrapped


async def _read_capped(receive: Receive, limit: int) -> list[Message] | None:
    """The body's messages if it ends within ``limit`` bytes; None once it goes over (the rest unread)."""
    messages, seen = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages
        seen += len(message.get("body", b""))
        if seen > limit:
            return None
        if not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first hands out ``messages`` (a body read ahead), then the real ones."""
    pending = list(messages)

    async def wrapped() -> Message:
        return pending.pop(0) if pending else await receive()

    return wrapped
