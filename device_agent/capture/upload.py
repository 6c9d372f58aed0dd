"""Batched uploads of captured samples to the fleet manager, over HTTP(S) with the device's upload token.

A batch is the oldest samples of the store, framed as ``[u32 length][sample]...`` (``npz.write_sample``)
(``application/x-edgefleet-capture``). The fleet manager answers which sample ids it stored (or holds
already) and which it refused; only those leave the store. Any failure (no network, a 5xx, a timeout)
leaves every sample where it is and the next attempt waits longer (doubling, at most ``MAX_BACKOFF_S``).
"""

from __future__ import annotations

import json
import logging
import struct
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

from device_agent.capture.store import SUFFIX, CaptureStore

log = logging.getLogger("edge-agent")
CONTENT_TYPE = "application/x-edgefleet-capture"
MAX_BATCH_BYTES = 4 << 20  # bytes per upload at most (the fleet manager accepts 8 MiB)
TIMEOUT_S = 30.0
MIN_BACKOFF_S, MAX_BACKOFF_S = 1.0, 60.0


def frame(samples: Iterable[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(s)) + s for s in samples)


def unframe(body: bytes, max_items: int) -> list[bytes]:
    """Raises: ValueError (a truncated frame, too many items)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(body):
        if len(out) >= max_items:
            raise ValueError(f"more than {max_items} samples in one upload")
        if pos + 4 > len(body):
            raise ValueError("truncated frame header")
        (n,) = struct.unpack_from(">I", body, pos)
        pos += 4
        if pos + n > len(body):
            raise ValueError("truncated sample")
        out.append(body[pos : pos + n])
        pos += n
    return out


@dataclass
class UploadResult:
    confirmed: int = 0
    rejected: int = 0
    error: str = ""


class Uploader:
    """Moves samples from the store to the fleet manager; ``upload_once`` is one attempt."""

    def __init__(self, store: CaptureStore, device: str) -> None:
        self.store, self.device = store, device  # device: "FLEET/ID", as the token was derived for
        self.uploaded = 0
        self.rejected = 0
        self.failures = 0
        self.last_error = ""
        self.backoff_s = 0.0

    def upload_once(self, url: str, token: str, batch: int) -> UploadResult:
        """Send one batch of the oldest samples; delete the ones the server confirmed."""
        samples = self.store.oldest(batch, MAX_BATCH_BYTES)
        if not samples:
            return UploadResult()
        req = urllib.request.Request(url, data=frame(d for _, d in samples), method="POST")
        req.add_header("Content-Type", CONTENT_TYPE)
        req.add_header("X-Edgefleet-Device", self.device)
        req.add_header("X-Edgefleet-Upload-Token", token)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                answer = json.loads(resp.read(1 << 20))
        except urllib.error.HTTPError as exc:
            return self._failed(f"HTTP {exc.code}")
        except (OSError, ValueError) as exc:  # URLError is an OSError; ValueError: not JSON
            return self._failed(str(getattr(exc, "reason", exc))[:200])
        names = {name.removesuffix(SUFFIX) for name, _ in samples}
        done = [i for i in answer.get("confirmed", []) if isinstance(i, str) and i in names]
        refused = [r.get("id") for r in answer.get("rejected", []) if isinstance(r, dict) and r.get("id") in names]
        self.store.remove(f"{i}{SUFFIX}" for i in done + refused)
        self.uploaded += len(done)
        self.rejected += len(refused)
        self.backoff_s, self.last_error = 0.0, ""
        return UploadResult(len(done), len(refused))

    def _failed(self, error: str) -> UploadResult:
        self.failures += 1
        self.last_error = error
        self.backoff_s = min(MAX_BACKOFF_S, max(MIN_BACKOFF_S, self.backoff_s * 2))
        log.info("capture upload failed (%s); next try in %.0f s", error, self.backoff_s)
        return UploadResult(error=error)
