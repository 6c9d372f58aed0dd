"""Where artifacts may come from: ``[download] allowed_urls``, URL prefixes compared part by part.

A prefix matches a URL with the same scheme and host, the same port when the prefix names one (any
port when it does not), and a path under the prefix's path. Parts are compared after parsing, so
``http://fleet.example/`` does not let ``http://fleet.example.evil.net/`` or ``http://user@evil/``
through, as a string prefix would. The standard library's parser is enough: the rule is four fields.
"""

from __future__ import annotations

import urllib.parse

from device_agent.errors import UrlNotAllowedError

DEFAULT_PORTS = {"http": 80, "https": 443}


def url_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    """True when ``allowed`` is empty (an unprovisioned home) or one of its prefixes matches ``url``."""
    if not allowed:
        return True
    try:
        u = urllib.parse.urlsplit(url)
        port = u.port or DEFAULT_PORTS.get(u.scheme)
    except ValueError:
        return False
    if u.scheme not in ("http", "https") or not u.hostname or u.username or u.password:
        return False
    return any(_matches(u, port, prefix) for prefix in allowed)


def _matches(u: urllib.parse.SplitResult, port: int | None, prefix: str) -> bool:
    try:
        p = urllib.parse.urlsplit(prefix)
        p_port = p.port
    except ValueError:
        return False
    if (u.scheme, u.hostname) != (p.scheme, p.hostname) or (p_port is not None and p_port != port):
        return False
    base = p.path if p.path.endswith("/") else p.path + "/"
    return base == "/" or u.path.startswith(base)


def check_url(url: str, allowed: tuple[str, ...]) -> None:
    """Raises: UrlNotAllowedError naming only the URL's origin (never its query: it may carry a signature)."""
    if not url_allowed(url, allowed):
        raise UrlNotAllowedError(f"artifact URL {redact_url(url)} is not under [download] allowed_urls")


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path`` without credentials, query or fragment, for logs and events."""
    try:
        u = urllib.parse.urlsplit(url)
        host = u.hostname or ""
        port = f":{u.port}" if u.port else ""
    except ValueError:
        return "<malformed URL>"
    return f"{u.scheme}://{host}{port}{u.path}"[:200]
