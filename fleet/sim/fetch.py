"""``KeepAliveHttpFetcher``: the device's ``Fetcher`` boundary over one persistent HTTP connection per thread.

For simulators running thousands of devices in a process: no TCP set-up per download. Same resumption,
size cap, retries and hash check as the device's ``HttpFetcher`` (they live in the ``Fetcher`` base class).
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator

from device_agent.errors import DownloadError, RangeIgnoredError
from device_agent.fetch import CHUNK, FetchConfig, Fetcher


class KeepAliveHttpFetcher(Fetcher):
    """Plain HTTP with one persistent connection per thread and server (for simulators running thousands of
    devices in a process: no TCP set-up per download). Same Range semantics as ``HttpFetcher``."""

    def __init__(self, config: FetchConfig | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(config, sleep)
        self._local = threading.local()

    def _connection(self, netloc: str, fresh: bool) -> http.client.HTTPConnection:
        conns: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(netloc)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            conn = conns[netloc] = http.client.HTTPConnection(netloc, timeout=self.config.timeout_s)
        return conn

    def _fetch(self, url: str, offset: int) -> Iterator[bytes]:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.netloc:
            raise DownloadError(f"{url}: only http:// URLs (use HttpFetcher for https)")
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        for attempt in (0, 1):  # a kept-alive connection the server closed meanwhile: reconnect once
            conn = self._connection(parts.netloc, fresh=attempt > 0)
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                if attempt:
                    raise DownloadError(f"{url}: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise DownloadError(f"{url}: {exc}") from None
        try:
            if response.status >= 400:
                raise DownloadError(f"{url}: HTTP {response.status} {response.reason}", status=response.status)
            if offset and response.status != 206:
                raise RangeIgnoredError("Range ignored")
            while chunk := response.read(CHUNK):
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"{url}: {exc}") from None
        finally:
            if not response.isclosed():
                response.read()  # leave the connection clean for the next request
                conn.close()
