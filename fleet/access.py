"""Who may do what: roles, token secrets and their hashes, the caller of the current request, and signed
artifact URLs. Pure: no store, no HTTP (the API and the store use it)."""

from __future__ import annotations

import contextvars
import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode

from fleet.errors import InvalidRequestError

TOKEN_BYTES = 32  # random bytes in a secret fleetctl creates (43 URL-safe characters)
MIN_SECRET = 16  # characters a bootstrap secret needs at least
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class Role(enum.StrEnum):
    """viewer < operator < admin: each can do what the ones below it can."""

    VIEWER = "viewer"  # read everything but tokens
    OPERATOR = "operator"  # releases, rollouts, rollback, tags
    ADMIN = "admin"  # tokens, device admission

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


def new_secret() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_secret(secret: str) -> str:
    """SHA-256 of a token secret. A fast hash is enough (as for GitHub's tokens): secrets are 256 random bits,
    not passwords, so there is nothing to brute-force; the store never holds a usable secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class Principal:
    """The caller of one request: the token's name and role, and the client's address."""

    name: str  # the token's name ("-" when no valid token was shown)
    role: Role | None  # None: no valid token
    source: str = ""


# The caller of the request being served, for the audit entries the store writes in that request. Set by
# the API's access middleware (same task as the route; worker threads get a copy of the context).
caller: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("edgefleet_caller", default=None)

DURATION_RE = re.compile(r"(\d{1,6})([smhdw])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` → seconds. Raises: InvalidRequestError."""
    match = DURATION_RE.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise InvalidRequestError(f"duration {text[:20]!r} must be a positive NUMBER[smhdw], e.g. 30d")
    return float(int(match.group(1)) * UNITS[match.group(2)])


@dataclass(frozen=True)
class UrlSigner:
    """Per-deployment artifact URLs: ``?dep=&dev=&exp=&sig=`` with an HMAC-SHA256 over the artifact, the
    deployment, the device and the expiry, so one device's URL fetches one artifact for a while, nothing
    else. Every fleet-manager process of a fleet shares ``key`` (kept in the store)."""

    key: bytes
    ttl_s: float = 6 * 3600.0  # seconds a URL stays valid (a device resumes on the same URL within it)

    def _mac(self, sha256: str, deployment: str, device: str, expires: int) -> str:
        msg = f"{sha256}|{deployment}|{device}|{expires}".encode()
        return hmac.new(self.key, msg, hashlib.sha256).hexdigest()

    def query(self, sha256: str, deployment: str, device: str, now: float) -> str:
        """The query string of a URL valid until ``now + ttl_s``."""
        expires = int(now + self.ttl_s)
        sig = self._mac(sha256, deployment, device, expires)
        return urlencode({"dep": deployment, "dev": device, "exp": expires, "sig": sig})

    def check(self, sha256: str, params: dict[str, str], now: float) -> str | None:
        """None if ``params`` sign ``sha256`` and have not expired, else the reason (``bad-signature``,
        ``url-expired``)."""
        try:
            dep, dev, exp, sig = params["dep"], params["dev"], int(params["exp"]), params["sig"]
        except (KeyError, ValueError):
            return "bad-signature"
        if not hmac.compare_digest(self._mac(sha256, dep, dev, exp).encode(), sig.encode()):
            return "bad-signature"
        return "url-expired" if exp < now else None
