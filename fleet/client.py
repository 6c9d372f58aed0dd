"""A small HTTP client for the fleet manager's API (httpx); what ``fleetctl`` commands call.

Every failure becomes an ``ApiError`` carrying the server's one-line message and code, so the CLI
prints one line; an unreachable server says which URL it tried.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from fleet.errors import ApiError

API = "/api/v1"


@dataclass
class ApiClient:
    server: str
    token: str | None = None
    timeout: float = 30.0  # seconds per request

    def _request(
        self, method: str, path: str, extra_headers: dict[str, str] | None = None, *, raw: bool = False, **kw: Any
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers.update(extra_headers or {})
        url = self.server.rstrip("/") + path
        try:
            resp = httpx.request(method, url, headers=headers, timeout=self.timeout, **kw)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the fleet manager at {self.server}: {exc}") from None
        if resp.status_code >= 400:
            try:
                body = resp.json()
                message, code = str(body.get("error") or body.get("detail")), body.get("code")
            except ValueError:
                message, code = resp.text[:200], None
            raise ApiError(f"{message} (HTTP {resp.status_code})", resp.status_code, code)
        return resp.content if raw else resp.json()

    def get(self, path: str, **params: Any) -> Any:
        return self._request("GET", API + path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self._request("POST", API + path, json=body if body is not None else {})

    def get_bytes(self, path: str) -> bytes:
        """A binary resource (e.g. a capture export). Raises: ApiError."""
        data: bytes = self._request("GET", API + path, raw=True)
        return data

    def add_release(self, bundle: Path) -> Any:
        """Raises: ApiError (including a refused bundle, with the reason code)."""
        size = bundle.stat().st_size
        with bundle.open("rb") as fh:  # streamed, with its length declared (the server refuses a body over its cap)
            headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
            return self._request("POST", API + "/releases", content=_chunks(fh), extra_headers=headers)


def _chunks(fh: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    while block := fh.read(size):
        yield block
