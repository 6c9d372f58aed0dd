"""Arrays as bytes: a captured sample (``.npy`` arrays one after another, ``meta`` first: what the device
writes for every capture, several times cheaper than a ZIP container, which costs ~0.5 ms of Python per
sample), exports as a reproducible ``.npz`` (fixed entry times, sorted names), and bounded readers of both
for untrusted bytes (no pickles, array count and size capped, ZIP bombs refused)."""

from __future__ import annotations

import functools
import io
import json
import threading
import zipfile
from collections.abc import Iterable, Mapping
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


MAGIC = b"\x93NUMPY\x01\x00"
_U8 = np.dtype(np.uint8)


def npy_bytes(array: np.ndarray) -> bytes:
    """One array in the ``.npy`` format (version 1.0), as ``numpy.save`` writes it."""
    a = np.ascontiguousarray(array)
    return _npy_header(a.dtype, a.shape) + a.tobytes()


@functools.lru_cache(maxsize=256)
def _npy_header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    """The header for one dtype and shape (a capture writes the same few again and again: cached)."""
    header = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    raw = header.encode("latin1")
    raw += b" " * (63 - (len(MAGIC) + 2 + len(raw)) % 64) + b"\n"  # data 64-byte aligned, as numpy does
    return MAGIC + len(raw).to_bytes(2, "little") + raw


# An array's shape, dtype and .npy header, made once for the arrays a model's samples all have (``frames``).
Frame = tuple[tuple[int, ...], Any, bytes]


def frames(arrays: Iterable[np.ndarray]) -> list[Frame]:
    """Each array's header with the shape and dtype it is for (a capture writes the same few again and again:
    the lru lookup below hashes a dtype, which costs as much as writing a small array)."""
    return [(a.shape, a.dtype, _npy_header(a.dtype, a.shape)) for a in arrays]


def write_sample(meta: bytes, arrays: list[np.ndarray], made: list[Frame] | None = None) -> bytes:
    """A captured sample: ``meta`` (JSON, naming the arrays in order), then the arrays, each as ``.npy``
    (``tobytes`` gives C order whatever the array's layout, as the header says). ``made``: ``frames`` of
    arrays like these; a header is used where its array still has that shape and dtype."""
    parts = [_npy_header(_U8, (len(meta),)), meta]
    if made is None or len(made) != len(arrays):
        made = [((), None, b"")] * len(arrays)  # no header matches
    for a, (shape, dtype, head) in zip(arrays, made, strict=True):
        parts += (head if a.shape == shape and a.dtype is dtype else _npy_header(a.dtype, a.shape), a.tobytes())
    return b"".join(parts)


def read_sample(data: bytes, *, max_arrays: int, max_bytes: int) -> tuple[Any, list[np.ndarray]]:
    """The metadata and arrays of an untrusted sample. Raises: PayloadError."""
    if len(data) > max_bytes:
        raise PayloadError(f"sample is over {max_bytes} bytes")
    fh = io.BytesIO(data)
    arrays: list[np.ndarray] = []
    try:
        while fh.tell() < len(data):
            if len(arrays) > max_arrays:
                raise PayloadError(f"sample has over {max_arrays} arrays")
            with _READ_LOCK:
                arrays.append(np.lib.format.read_array(fh, allow_pickle=False))
    except (ValueError, OSError, EOFError) as exc:
        raise PayloadError(f"sample is not a sequence of .npy arrays: {str(exc)[:120]}") from None
    if not arrays:
        raise PayloadError("sample is empty")
    return sample_meta({"meta": arrays[0]}), arrays[1:]


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
