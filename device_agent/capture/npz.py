"""Captured samples as ``.npz`` bytes: a reproducible writer (fixed entry times, sorted names) and a
bounded reader for untrusted bytes (no pickles, entry count and unpacked size capped, ZIP bombs refused)."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from device_agent.bundle.archive import FIXED_DATE
from device_agent.errors import PayloadError

# numpy parses .npy headers with ast.literal_eval, and CPython 3.11's compile() is not thread-safe
# ("AST constructor recursion depth mismatch"): the fleet manager's upload threads read one at a time.
_READ_LOCK = threading.Lock()


def write_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` whose bytes depend only on the arrays (``numpy.load`` reads it)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    return out.getvalue()


def read_npz(data: bytes, *, max_arrays: int, max_bytes: int) -> dict[str, np.ndarray]:
    """The arrays of an untrusted ``.npz``. Raises: PayloadError (not an npz, too many or too large
    entries, object arrays)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > max_arrays or sum(i.file_size for i in infos) > max_bytes:
                raise PayloadError(f"sample has over {max_arrays} arrays or over {max_bytes} bytes unpacked")
            out: dict[str, np.ndarray] = {}
            for info in infos:
                if not info.filename.endswith(".npy") or "/" in info.filename:
                    raise PayloadError(f"sample entry {info.filename[:40]!r} is not an array")
                with zf.open(info) as fh, _READ_LOCK:
                    a = np.lib.format.read_array(fh, allow_pickle=False)
                out[info.filename.removesuffix(".npy")] = a
            return out
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise PayloadError(f"sample is not a readable .npz: {str(exc)[:120]}") from None


def sample_meta(arrays: Mapping[str, np.ndarray]) -> Any:
    """The JSON metadata a captured sample carries in its ``meta`` array. Raises: PayloadError."""
    meta = arrays.get("meta")
    if meta is None or meta.dtype != np.uint8 or meta.ndim != 1 or meta.size > 64 << 10:
        raise PayloadError("sample has no metadata (a uint8 'meta' array of JSON)")
    try:
        return json.loads(meta.tobytes())
    except ValueError as exc:
        raise PayloadError(f"sample metadata is not JSON: {exc}") from None
