"""The console's session: an HMAC-signed cookie issued after signing in with an API token, and the CSRF token
of its forms. Pure: bytes and times in, a ``Session`` or None out.

The cookie holds the token's hash (never its secret), a random nonce and an expiry; every request looks the
hash up again (``Authenticator.by_hash``), so revoking or expiring the token ends its console sessions at once.
Hand-written with the standard library's ``hmac`` (as ``fleet.access.UrlSigner``): a signed value is a dozen
lines, and the usual library for it (itsdangerous) is not a dependency of the fleet manager.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

COOKIE = "edgefleet_session"
LOGIN_COOKIE = "edgefleet_login"  # the CSRF nonce of the sign-in form (no session yet)
TTL_S = 8 * 3600.0  # seconds a console session lasts
MAX_COOKIE = 512  # characters of a session cookie we look at


@dataclass(frozen=True)
class Session:
    token_hash: str  # sha256 of the API token signed in with
    nonce: str
    expires: float  # epoch seconds
    csrf: str  # what every form of this session must send back


@dataclass(frozen=True)
class SessionCodec:
    """Issues and reads session cookies with ``key`` (derived from the fleet's signing key, so every
    fleet-manager process of a fleet accepts the same sessions)."""

    key: bytes
    ttl_s: float = TTL_S

    @classmethod
    def derived(cls, fleet_key: bytes, ttl_s: float = TTL_S) -> SessionCodec:
        """A key of its own for the console: sessions and artifact URLs never share a MAC key."""
        return cls(hmac.new(fleet_key, b"edgefleet console session v1", hashlib.sha256).digest(), ttl_s)

    def _mac(self, payload: bytes) -> str:
        return hmac.new(self.key, payload, hashlib.sha256).hexdigest()

    def csrf_for(self, nonce: str) -> str:
        return hmac.new(self.key, f"csrf|{nonce}".encode(), hashlib.sha256).hexdigest()[:40]

    def issue(self, token_hash: str, now: float) -> tuple[str, Session]:
        """A new session for the token with hash ``token_hash``: the cookie value and the session."""
        nonce = secrets.token_urlsafe(16)
        expires = int(now + self.ttl_s)
        payload = base64.urlsafe_b64encode(json.dumps([token_hash, nonce, expires]).encode())
        value = f"{payload.decode()}.{self._mac(payload)}"
        return value, Session(token_hash, nonce, expires, self.csrf_for(nonce))

    def read(self, value: str | None, now: float) -> Session | None:
        """The session of a cookie value; None when missing, forged, malformed or expired."""
        if not value or len(value) > MAX_COOKIE or "." not in value:
            return None
        payload, _, mac = value.rpartition(".")
        if not hmac.compare_digest(self._mac(payload.encode()).encode(), mac.encode()):
            return None
        try:
            token_hash, nonce, expires = json.loads(base64.urlsafe_b64decode(payload.encode()))
        except (ValueError, TypeError):
            return None
        if not (isinstance(token_hash, str) and isinstance(nonce, str) and isinstance(expires, int)):
            return None
        if expires <= now:
            return None
        return Session(token_hash, nonce, expires, self.csrf_for(nonce))


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two form/cookie values; a missing one never matches."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())
