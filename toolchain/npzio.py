"""Arrays in and out: loading user .npz/.npy data against a model's inputs, and writing
byte-reproducible .npz files (``numpy.savez`` stamps the current time into its ZIP entries).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from device_agent.bundle.archive import FIXED_DATE
from device_agent.bundle.manifest import TensorInfo
from device_agent.runtime.base import quantize
from device_agent.samples import batch_first
from toolchain.errors import DataError


def save_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An .npz (readable by ``numpy.load``) whose bytes depend only on the arrays."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name], order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    return out.getvalue()


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Load an .npz, one .npy, or a directory of .npy files (loaded one by one, never pickles).

    Raises:
        DataError: missing or unreadable file.
    """
    path = Path(path)
    try:
        if path.is_dir():
            files = sorted(path.glob("*.npy"))
            if not files:
                raise DataError(f"{path} holds no .npy files")
            return {"x": np.concatenate([np.load(f, allow_pickle=False) for f in files])}
        if path.suffix == ".npy":
            return {"x": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz/.npy file: {str(exc)[:200]}") from None


def check_meta(spec: TensorInfo, dtype: np.dtype, shape: Sequence[int], source: str) -> None:
    """Check that stacked samples of ``dtype``/``shape`` can feed input ``spec``.

    Samples run along axis 0: a batch-first input's own batch axis, else a new leading axis
    (``device_agent.samples``). Floating data may feed any floating input (it is cast); other
    dtype mismatches are errors.

    Raises:
        DataError: naming the input and what was expected.
    """
    want = np.dtype(spec.dtype)
    if dtype != want and not (dtype.kind == "f" and want.kind == "f"):
        raise DataError(f"{source}: input {spec.name!r} needs {want.name}, the data is {dtype.name}")
    sample = tuple(spec.shape[1:]) if batch_first(spec) else tuple(spec.shape)
    if len(shape) != len(sample) + 1 or not _fits(sample, shape[1:]):
        stacked = ["N", *sample]
        raise DataError(
            f"{source}: input {spec.name!r} needs samples of shape {list(sample)}, the data is {list(shape)} "
            f"(samples stack as {stacked})"
        )


def _fits(want: Sequence[int], got: Sequence[int]) -> bool:
    return len(want) == len(got) and all(w in (-1, g) for w, g in zip(want, got, strict=True))


def one_sample(shapes: Mapping[str, Sequence[int]], inputs: Sequence[TensorInfo], source: str) -> bool:
    """Whether ``shapes`` (input name → array shape) hold exactly one sample in the model's own shapes.

    That is the case when an input that does not stack along a batch axis (a scalar, a state) has
    an array of the model's shape; every batch-first array must then hold one sample too.

    Raises:
        DataError: some arrays are single samples and others stacked (the line says which to use).
    """
    lone: list[TensorInfo] = []  # non-batch-first inputs given as one sample
    stacked: list[tuple[TensorInfo, tuple[int, ...]]] = []  # inputs given as several (or stacked) samples
    for spec in inputs:
        shape = tuple(shapes[spec.name])
        if batch_first(spec):
            if len(shape) != len(spec.shape) or shape[0] != 1:
                stacked.append((spec, shape))
        elif len(shape) == len(spec.shape) and _fits(spec.shape, shape):
            lone.append(spec)
        else:
            stacked.append((spec, shape))
    if not lone:
        return False
    if stacked:
        spec, shape = stacked[0]
        raise DataError(
            f"{source}: {lone[0].name!r} is one sample (shape {list(lone[0].shape)}, the model's own) but "
            f"{spec.name!r} is {list(shape)}; either stack every input's samples on a new leading axis "
            f"({lone[0].name!r} as {['N', *lone[0].shape]}) or give one sample per .npz file in a directory"
        )
    return True


def feeds_for(arrays: Mapping[str, np.ndarray], inputs: Sequence[TensorInfo], source: str) -> dict[str, np.ndarray]:
    """Map arrays to model inputs: ``x`` for a single-input model, else one array per input name.

    Samples run along axis 0 (see ``check_meta``), or the arrays are one sample in the model's own
    shapes (``one_sample``). Floating data is cast to a floating input's precision, or quantized
    with a quantized input's scale and zero-point; any other dtype mismatch, a missing input, or a
    per-sample shape that does not fit is an error.

    Raises:
        DataError: naming the input and what was expected.
    """
    out: dict[str, np.ndarray] = {}
    given = {spec.name: _array_for(arrays, spec, inputs, source) for spec in inputs}
    single = one_sample({k: v.shape for k, v in given.items()}, inputs, source)
    for spec in inputs:
        a = given[spec.name][np.newaxis] if single and not batch_first(spec) else given[spec.name]
        want = np.dtype(spec.dtype)
        if a.dtype != want and a.dtype.kind == "f" and want.kind == "f":
            a = a.astype(want)
        elif a.dtype != want and a.dtype.kind == "f" and spec.quantization is not None:
            a = quantize(a, spec)  # float data for a quantized input: the input's own scale/zero-point
        check_meta(spec, a.dtype, a.shape, source)
        out[spec.name] = a
    counts = {len(a) for a in out.values()}
    if len(counts) != 1 or 0 in counts:
        raise DataError(f"{source}: inputs need the same non-zero number of samples, got {sorted(counts)}")
    return out


def _array_for(
    arrays: Mapping[str, np.ndarray], spec: TensorInfo, inputs: Sequence[TensorInfo], source: str
) -> np.ndarray:
    if spec.name in arrays:
        return np.asarray(arrays[spec.name])
    if len(inputs) == 1 and "x" in arrays:
        return np.asarray(arrays["x"])
    raise DataError(f"{source} has no array for input {spec.name!r} (keys: {', '.join(arrays) or 'none'})")
