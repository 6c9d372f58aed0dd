"""Artifact downloads: one small boundary (``Fetcher._fetch``) and the resumable download around it.

The base class enforces the size cap, resumes from a ``.part`` file with HTTP Range, retries with
exponential backoff and jitter, checks SHA-256 and renames into place atomically; backends only
yield bytes (after python-tuf's FetcherInterface). ``HttpFetcher`` uses the standard library; other
backends (``fleet.sim.fetch.KeepAliveHttpFetcher``) implement the same ``_fetch``.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

from device_agent.config import DownloadSection
from device_agent.errors import (
    DownloadError,
    DownloadHashError,
    DownloadTooLargeError,
    RangeIgnoredError,
    TransportError,
    UrlNotAllowedError,
)
from device_agent.fsutil import fsync_dir
from device_agent.urlpolicy import redact_url

CHUNK = 64 * 1024  # bytes per read


FetchConfig = DownloadSection  # agent.toml's [download] section is the fetcher's configuration


class Fetcher(ABC):
    def __init__(self, config: FetchConfig | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config or FetchConfig()
        self._sleep = sleep

    @abstractmethod
    def _fetch(self, url: str, offset: int) -> Iterator[bytes]:
        """Yield the resource's bytes from ``offset``; restart from 0 by raising ``RangeIgnoredError``.

        Raises:
            TransportError: any network or server failure.
        """

    def download(self, url: str, dest: Path, size: int, sha256: str) -> Path:
        """Download to ``dest`` (resuming ``dest.part``), verify size and hash, rename into place.

        Raises:
            DownloadTooLargeError, DownloadHashError, DownloadError
        """
        if size > self.config.max_bytes:
            raise DownloadTooLargeError(f"artifact is {size} bytes, over the {self.config.max_bytes}-byte cap")
        if dest.exists() and _sha256_file(dest) == sha256:
            return dest  # finished before a restart
        part = dest.with_name(dest.name + ".part")
        last: Exception | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                delay = random.uniform(0, min(60.0, self.config.backoff_s * 2 ** (attempt - 1)))
                self._sleep(delay)
            try:
                self._resume(url, part, size)
                break
            except RangeIgnoredError:
                part.unlink(missing_ok=True)
                last = DownloadError("server ignored the Range request; restarting from the beginning")
            except DownloadTooLargeError:
                part.unlink(missing_ok=True)
                raise  # retrying cannot help: the server sends something else than announced
            except UrlNotAllowedError:
                raise  # a redirect off the allowed URLs: retrying would only follow it again
            except TransportError as exc:
                last = exc
        else:
            raise DownloadError(
                f"download of {redact_url(url)} failed after {self.config.retries + 1} attempts: {last}"
            )
        digest = _sha256_file(part)
        if digest != sha256:
            part.unlink(missing_ok=True)
            raise DownloadHashError(f"downloaded artifact has sha256 {digest[:16]}…, expected {sha256[:16]}…")
        os.replace(part, dest)
        fsync_dir(dest.parent)
        return dest

    def _resume(self, url: str, part: Path, size: int) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size:
            return
        with part.open("ab") as fh:
            for chunk in self._fetch(url, have):
                have += len(chunk)
                if have > size:
                    fh.truncate(0)
                    raise DownloadTooLargeError(f"server sent more than the announced {size} bytes")
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        if have != size:
            raise DownloadError(f"connection closed after {have} of {size} bytes")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Artifacts are served where the fleet said: a redirect is refused, not followed to another host."""

    def redirect_request(self, req: urllib.request.Request, fp: object, code: int, *args: object) -> None:
        raise UrlNotAllowedError(f"{redact_url(req.full_url)}: HTTP {code} redirect refused")


_OPENER = urllib.request.build_opener(_NoRedirect)


class HttpFetcher(Fetcher):
    """HTTP(S) with ``Range: bytes=N-`` for resumption (standard library only, no extra dependency).

    Error messages carry the status code and the URL without its query, never the server's own
    words or body: a deployment event must not echo what a server sent (nor a signed URL's secret)."""

    def _fetch(self, url: str, offset: int) -> Iterator[bytes]:
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        where = redact_url(url)
        try:
            with _OPENER.open(request, timeout=self.config.timeout_s) as response:
                if offset and response.status != 206:
                    raise RangeIgnoredError("Range ignored")
                while chunk := response.read(CHUNK):
                    yield chunk
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{where}: HTTP {exc.code}", status=exc.code) from None
        except urllib.error.URLError as exc:
            reason = exc.reason.strerror if isinstance(exc.reason, OSError) else type(exc.reason).__name__
            raise DownloadError(f"{where}: {reason or 'connection failed'}") from None
        except (OSError, ValueError) as exc:
            raise DownloadError(f"{where}: {type(exc).__name__}") from None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()
