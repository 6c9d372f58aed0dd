"""What the local API checks before it does any work: who may call, how much they may send, and how
large the arrays they send may become.

Pure functions of headers and bytes (no sockets), so each refusal is tested directly:

- ``check_length``: a POST needs a ``Content-Length`` (no chunked bodies), non-negative, within the
  cap; refused before a byte of the body is read.
- ``check_caller``: over TCP, a ``Bearer`` token (compared in constant time) and a ``Host`` naming
  the listening address (``Origin`` too, when sent), against DNS rebinding and browser pages.
- ``check_arrays``: the decoded size and element count of a ``.npy`` / ``.npz`` body, computed from
  the ZIP directory and the ``.npy`` headers before numpy allocates anything.

The ``.npy`` header parser is numpy's own (``numpy.lib.format``); only the accounting is ours.
"""

from __future__ import annotations

import hmac
import io
import math
import secrets
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from device_agent.errors import ApiRefusedError
from device_agent.fsutil import atomic_write

MAX_NPZ_MEMBERS = 64  # arrays per .npz request


class Headers(Protocol):
    """Request headers, looked up case-insensitively (``http.server``'s ``Message``)."""

    def get(self, name: str, default: None = None) -> str | None: ...


def _refuse(status: int, code: str, message: str) -> ApiRefusedError:
    return ApiRefusedError(message, status=status, code=code)


@dataclass(frozen=True)
class ApiLimits:
    """The local API's bounds (agent.toml ``[api]``)."""

    max_body_bytes: int = 16 << 20  # .npy / .npz request bodies
    max_json_bytes: int = 2 << 20  # JSON bodies (a JSON number becomes a 32-byte Python object)
    max_decoded_bytes: int = 64 << 20  # arrays of one request, once decoded
    max_elements: int = 16 << 20  # array elements of one request


def check_length(headers: Headers, content_type: str, limits: ApiLimits) -> int:
    """The body's length, once it is known to be acceptable.

    Raises:
        ApiRefusedError: 411 (absent, malformed, negative, chunked) or 413 (over the cap for this content type).
    """
    if headers.get("Transfer-Encoding"):
        raise _refuse(411, "length-required", "chunked bodies are not accepted: send Content-Length")
    raw = headers.get("Content-Length")
    if raw is None or not raw.strip().isdigit():
        raise _refuse(411, "length-required", "a POST needs a non-negative integer Content-Length")
    length = int(raw)
    cap = limits.max_body_bytes if content_type.startswith("application/x-np") else limits.max_json_bytes
    if length > cap:
        raise _refuse(413, "too-large", f"body of {length} bytes is over the {cap}-byte cap for {content_type}")
    return length


def check_caller(headers: Headers, token: str, hosts: frozenset[str]) -> None:
    """For a TCP listener: the token, ``Host`` and ``Origin``.

    Raises:
        ApiRefusedError: 401 (no or wrong token), 403 (a Host or Origin that is not this listener).
    """
    host = (headers.get("Host") or "").lower()
    if host not in hosts:
        raise _refuse(403, "bad-host", "the Host header does not name this agent's API")
    origin = headers.get("Origin")
    if origin is not None and origin.lower() not in {f"http://{h}" for h in hosts}:
        raise _refuse(403, "bad-origin", "cross-origin requests are refused")
    auth = headers.get("Authorization") or ""
    given = auth[7:].strip() if auth.startswith("Bearer ") else ""
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise _refuse(401, "unauthorized", "a valid API token is required (Authorization: Bearer, see api.token)")


def listener_hosts(host: str, port: int) -> frozenset[str]:
    """The ``Host`` values that name a TCP listener on ``host:port``."""
    names = {host, "localhost"} if host in ("127.0.0.1", "::1", "localhost") else {host}
    return frozenset(f"[{n}]:{port}" if ":" in n else f"{n}:{port}" for n in names)


def load_or_create_token(path: Path) -> str:
    """The API token in ``path`` (mode 0600), created at random on first use."""
    try:
        token = path.read_text(encoding="ascii").strip()
        if len(token) >= 32:
            return token
    except (OSError, UnicodeDecodeError):
        pass
    token = secrets.token_urlsafe(32)
    atomic_write(path, token.encode() + b"\n", mode=0o600)
    return token


def check_arrays(body: bytes, content_type: str, limits: ApiLimits) -> None:
    """Raises: ApiRefusedError 413 when the arrays would decode past the caps, 400 when the headers are unreadable."""
    if content_type.startswith("application/x-npy"):
        total = _npy_cost(io.BytesIO(body))
    elif content_type.startswith("application/x-npz"):
        total = _npz_cost(body, limits)
    else:
        return
    elements, nbytes = total
    if elements > limits.max_elements or nbytes > limits.max_decoded_bytes:
        raise _refuse(
            413,
            "too-large",
            f"arrays of {elements} elements / {nbytes} bytes are over the caps "
            f"({limits.max_elements} elements, {limits.max_decoded_bytes} bytes)",
        )


def _npz_cost(body: bytes, limits: ApiLimits) -> tuple[int, int]:
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_NPZ_MEMBERS:
                raise _refuse(413, "too-large", f".npz with {len(infos)} arrays, over {MAX_NPZ_MEMBERS}")
            declared = sum(i.file_size for i in infos)
            if declared > limits.max_decoded_bytes:
                raise _refuse(413, "too-large", f".npz expands to {declared} bytes, over {limits.max_decoded_bytes}")
            elements = nbytes = 0
            for info in infos:
                with zf.open(info) as member:
                    e, b = _npy_cost(member)
                elements, nbytes = elements + e, nbytes + b
            return elements, nbytes
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise _refuse(400, "bad-request", f"not a readable .npz: {type(exc).__name__}") from None


def _npy_cost(stream: IO[bytes]) -> tuple[int, int]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = reader(stream)
    except (ValueError, EOFError, OSError, TypeError) as exc:
        raise _refuse(400, "bad-request", f"unreadable .npy header: {str(exc)[:120]}") from None
    if dtype.hasobject:
        raise _refuse(400, "bad-request", ".npy arrays of Python objects are refused")
    elements = math.prod(int(d) for d in shape)
    return elements, elements * max(1, dtype.itemsize)
