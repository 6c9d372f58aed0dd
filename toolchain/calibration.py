"""Streamed calibration samples: one sample at a time, so memory does not grow with the sample count.

Sources: an ``.npz`` (one array ``x`` for a single-input model, or one array per input name), an
``.npy``, a directory of ``.npy`` files (each one sample or a batch of samples, in name order), or a
directory of ``.npz`` files (each one sample, or stacked samples, for any number of inputs). Samples
are stacked as ``device_agent.samples`` says; an ``.npz`` whose arrays have the model's own shapes
(a scalar input as a scalar) is one sample.
Array headers are read and checked against the model's inputs before any sample is produced, and
the rows are then read from the file one by one (``.npz`` members are streamed out of the ZIP;
``.npy`` files are memory-mapped). The order is the file order: the same file gives the same
samples, in the same order, every time.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from device_agent.bundle.manifest import TensorInfo
from device_agent.samples import batch_first
from toolchain.errors import DataError
from toolchain.npzio import check_meta, feeds_for, load_arrays, one_sample

# One array's rows: a callable that opens a fresh iterator over (1, *sample_shape) arrays.
RowSource = Callable[[], Iterator[np.ndarray]]


@dataclass(frozen=True)
class _Array:
    dtype: np.dtype
    shape: tuple[int, ...]
    rows: RowSource


class SampleStream:
    """Re-iterable samples for a model's inputs: each item maps input name → array with batch 1."""

    def __init__(self, arrays: dict[str, _Array], inputs: Sequence[TensorInfo], limit: int | None, source: str):
        self.source = source
        self._arrays = arrays
        self._inputs = tuple(inputs)
        counts = {a.shape[0] for a in arrays.values()}
        if len(counts) != 1 or 0 in counts:
            raise DataError(f"{source}: inputs need the same non-zero number of samples, got {sorted(counts)}")
        available = counts.pop()
        self.count = min(available, limit) if limit else available

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self._inputs

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._inputs)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """Samples as the model takes them: batch 1 for batch-first inputs, the model's shape for others."""
        iters = {name: a.rows() for name, a in self._arrays.items()}
        for _ in range(self.count):
            sample = {}
            for spec in self._inputs:
                row = next(iters[spec.name]).astype(spec.dtype, copy=False)
                sample[spec.name] = row if batch_first(spec) else np.asarray(row[0])
            yield sample


def open_samples(path: Path, inputs: Sequence[TensorInfo], limit: int | None = None) -> SampleStream:
    """Open ``path`` as a stream of samples for ``inputs`` (at most ``limit`` of them).

    Raises:
        DataError: missing or unreadable file, a missing input, or a dtype/shape that does not fit.
    """
    source = str(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir() and any(path.glob("*.npz")):
        found = _dir_npz(path, inputs)
    elif path.is_dir():
        found = {"x": _dir_array(path, inputs)}
    elif path.suffix == ".npy":
        found = {"x": _npy_array(path)}
    else:
        found = _npz_arrays(path)
    chosen: dict[str, _Array] = {}
    for spec in inputs:
        key = spec.name if spec.name in found else "x" if len(inputs) == 1 and "x" in found else None
        if key is None:
            raise DataError(f"{source} has no array for input {spec.name!r} (keys: {', '.join(found) or 'none'})")
        chosen[spec.name] = found[key]
    if one_sample({k: a.shape for k, a in chosen.items()}, inputs, source):
        chosen = {s.name: _as_one(chosen[s.name]) if not batch_first(s) else chosen[s.name] for s in inputs}
    for spec in inputs:
        check_meta(spec, chosen[spec.name].dtype, chosen[spec.name].shape, source)
    return SampleStream(chosen, inputs, limit, source)


def _as_one(array: _Array) -> _Array:
    """An array holding one sample in the model's own shape, as a stack of one."""

    def rows() -> Iterator[np.ndarray]:
        yield np.concatenate(list(array.rows())).reshape((1, *array.shape))

    return _Array(array.dtype, (1, *array.shape), rows)


def _read_header(fh: IO[bytes], source: str) -> tuple[np.dtype, tuple[int, ...]]:
    try:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(fh)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{source} is not a readable .npy array: {exc}") from None
    if fortran or dtype.hasobject:
        raise DataError(f"{source}: arrays must be C-ordered numeric arrays")
    return np.dtype(dtype), tuple(shape)


def _npz_arrays(path: Path) -> dict[str, _Array]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith(".npy")]
            headers = {}
            for member in names:
                with zf.open(member) as fh:
                    headers[member] = _read_header(fh, f"{path}:{member}")
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path} is not a readable .npz file: {exc}") from None
    return {m.removesuffix(".npy"): _Array(d, s, _npz_rows(path, m, d, s)) for m, (d, s) in headers.items()}


def _npz_rows(path: Path, member: str, dtype: np.dtype, shape: tuple[int, ...]) -> RowSource:
    """Rows along axis 0; a scalar array is one row (``_as_one`` gives it its stack shape)."""
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def rows() -> Iterator[np.ndarray]:
        with zipfile.ZipFile(path) as zf, zf.open(member) as fh:
            _read_header(fh, member)
            for _ in range(shape[0] if shape else 1):
                chunk = fh.read(row_bytes)
                if len(chunk) != row_bytes:
                    raise DataError(f"{path}:{member} is truncated")
                yield np.frombuffer(chunk, dtype).reshape((1, *shape[1:]))

    return rows


def _dir_npz(path: Path, inputs: Sequence[TensorInfo]) -> dict[str, _Array]:
    """A directory of .npz files, in name order: each one sample (or stacked samples) for every input."""
    files = sorted(path.glob("*.npz"))
    metas = []
    for f in files:
        stacked = feeds_for(load_arrays(f), inputs, str(f))
        metas.append({k: (v.dtype, v.shape) for k, v in stacked.items()})
    found = {}
    for spec in inputs:
        kinds = {(d, s[1:]) for m in metas for d, s in [m[spec.name]]}
        if len(kinds) != 1:
            raise DataError(f"{path}: the .npz files differ in dtype or sample shape for input {spec.name!r}")
        dtype, sample = kinds.pop()
        count = sum(m[spec.name][1][0] for m in metas)
        found[spec.name] = _Array(dtype, (count, *sample), _dir_npz_rows(files, inputs, spec.name))
    return found


def _dir_npz_rows(files: Sequence[Path], inputs: Sequence[TensorInfo], name: str) -> RowSource:
    def rows() -> Iterator[np.ndarray]:
        for f in files:
            data = feeds_for(load_arrays(f), inputs, str(f))[name]
            for i in range(len(data)):
                yield data[i : i + 1]

    return rows


def _npy_array(path: Path) -> _Array:
    with path.open("rb") as fh:
        dtype, shape = _read_header(fh, str(path))

    def rows() -> Iterator[np.ndarray]:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
        if not shape:  # a scalar: one sample (``_as_one`` gives it its stack shape)
            yield np.asarray(data).reshape(1)
            return
        for i in range(shape[0]):
            yield np.asarray(data[i : i + 1])

    return _Array(dtype, shape, rows)


def _dir_array(path: Path, inputs: Sequence[TensorInfo]) -> _Array:
    """A directory of .npy files as one sample axis; a file of rank ``input rank - 1`` is one sample."""
    files = sorted(path.glob("*.npy"))
    if not files:
        raise DataError(f"{path} holds no .npy files")
    if len(inputs) != 1:
        raise DataError(f"{path}: a directory of .npy files can only feed a single-input model; use an .npz")
    rank = len(inputs[0].shape)
    metas = []
    for f in files:
        with f.open("rb") as fh:
            dtype, shape = _read_header(fh, str(f))
        metas.append((dtype, shape if len(shape) == rank else (1, *shape)))
    if len({(d, s[1:]) for d, s in metas}) != 1:
        raise DataError(f"{path}: the .npy files differ in dtype or sample shape")

    def rows() -> Iterator[np.ndarray]:
        for f, (_, shape) in zip(files, metas, strict=True):
            data = np.load(f, mmap_mode="r", allow_pickle=False).reshape(shape)
            for i in range(shape[0]):
                yield np.asarray(data[i : i + 1])

    dtype, shape = metas[0]
    return _Array(dtype, (sum(s[0] for _, s in metas), *shape[1:]), rows)


def stack(stream: SampleStream) -> dict[str, np.ndarray]:
    """All samples of ``stream`` as arrays (for evaluation sets, which are small by nature)."""
    batches: dict[str, list[np.ndarray]] = {name: [] for name in stream.names}
    for sample in stream:
        for name, value in sample.items():
            batches[name].append(value)
    bf = {s.name: batch_first(s) for s in stream.inputs}
    return {name: np.concatenate(v) if bf[name] else np.stack(v) for name, v in batches.items()}
