"""The bundle's self-test on the device: decode its reference file, judge a model's outputs against it.

Two forms (docs/bundle-format.md#the-self-test):

- full (``edgefleet-bundle/1``): ``in0…`` reference inputs and ``out0…`` the whole expected outputs.
- compact (``edgefleet-bundle/2``, written only when the full form would make the bundle much larger
  than its model): inputs are real samples coded as uint8 (``in{i}`` with ``in{i}_lo``/``in{i}_step``;
  integer and bool inputs as they are), or generated here from the manifest's seed within its ranges
  (``in{i}_shape`` gives a sample's stacked shape). Per output: its stacked shape ``out{o}_shape``, a
  fixed subsample of elements drawn from the seed (``out{o}_values``, float16 where that is exact
  enough), four statistics of every sample over all its elements (``out{o}_stats``: mean, std, min,
  max) and, for a classifier's output, the top-1 class of each sample (``out{o}_top1``).

numpy only, and imported lazily: the device loads it when it runs a self-test.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from device_agent.bundle.manifest import CompactSelfTest, Manifest, TensorInfo
from device_agent.errors import SelfTestError

MAX_NPZ_RATIO = 64  # the members may expand to this many times the file's bytes…
NPZ_SLACK_BYTES = 8 << 20  # …plus this (a drawing of a face deflates 100x): more is a decompression bomb
MAX_NPZ_BYTES = 1 << 30  # bytes, all members uncompressed
INPUT_STREAM, OUTPUT_STREAM = 0, 1  # the second word of the PCG64 seed: what the draws are for


@dataclass(frozen=True)
class SelfTestResult:
    ok: bool
    max_abs_error: float
    top1_agreement: float | None
    detail: str


@dataclass(frozen=True)
class Expected:
    """One output's expectation in the compact form."""

    shape: tuple[int, ...]  # the stacked outputs of all samples
    index: np.ndarray  # flat element indices within one sample
    values: np.ndarray  # [samples, len(index)]
    stats: np.ndarray  # [samples, 4]: mean, std, min, max over every element of a sample
    top1: np.ndarray | None  # [samples] for the classifier output


@dataclass(frozen=True)
class Reference:
    """Decoded self-test: stacked inputs, and the full expected outputs or compact expectations."""

    inputs: dict[str, np.ndarray]
    full: dict[str, np.ndarray] = field(default_factory=dict)
    compact: dict[str, Expected] = field(default_factory=dict)


def load_npz(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of an .npz held in memory, refusing pickles and decompression bombs.

    Raises:
        SelfTestError: unreadable, or members expanding to more than ``MAX_NPZ_RATIO`` times the file's
            bytes plus ``NPZ_SLACK_BYTES`` (zipfile never yields more than a member's declared size).
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            total = sum(info.file_size for info in zf.infolist())
        allowed = min(MAX_NPZ_RATIO * len(data) + NPZ_SLACK_BYTES, MAX_NPZ_BYTES)
        if total > allowed:
            raise SelfTestError(f"the self-test file expands to {total} bytes, over {allowed}: decompression bomb")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise SelfTestError(f"the self-test file is unreadable: {str(exc)[:200]}") from None


def draws(seed: int, stream: int, index: int, count: int) -> np.ndarray:
    """``count`` raw 64-bit draws of PCG64 seeded with ``SeedSequence([seed, stream, index])``.

    numpy keeps its bit generators' streams fixed across versions (NEP 19), unlike ``Generator``
    methods, so the toolchain and a device with another numpy draw the same numbers.
    """
    return np.random.PCG64([seed, stream, index]).random_raw(count)


def generate_input(seed: int, i: int, dtype: str, shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    """Input ``i`` generated from ``seed``: uniform in [lo, hi) for floats (u = (draw >> 11)·2⁻⁵³,
    x = lo + (hi − lo)·u in float64, then cast), lo + draw mod (hi − lo + 1) for integers, draw & 1 for bool."""
    raw = draws(seed, INPUT_STREAM, i, int(np.prod(shape, dtype=np.int64)))
    dt = np.dtype(dtype)
    if dt.kind == "f":
        u = (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53
        return (lo + (hi - lo) * u).astype(dt).reshape(shape)
    if dt.kind == "b":
        return (raw & np.uint64(1)).astype(bool).reshape(shape)
    span = np.uint64(int(hi) - int(lo) + 1)
    return (int(lo) + (raw % span).astype(np.int64)).astype(dt).reshape(shape)


def decode_input(arrays: Mapping[str, np.ndarray], i: int, spec: TensorInfo) -> np.ndarray:
    """Coded input ``i``: x = lo + step·q in float32 (then the input's dtype), or the array as stored."""
    q = arrays[f"in{i}"]
    if f"in{i}_lo" not in arrays:
        return q
    lo, step = np.float32(arrays[f"in{i}_lo"]), np.float32(arrays[f"in{i}_step"])
    return (lo + step * q.astype(np.float32)).astype(spec.dtype)


def element_index(seed: int, output: int, size: int, elements: int) -> np.ndarray:
    """The flat element indices of one sample of ``output`` the compact form keeps (sorted, distinct)."""
    if size <= elements:
        return np.arange(size, dtype=np.int64)
    return np.unique(draws(seed, OUTPUT_STREAM, output, elements) % np.uint64(size)).astype(np.int64)


def summary(rows: np.ndarray) -> np.ndarray:
    """[samples, 4]: mean, std, min and max of each row (one sample's elements) in float64."""
    rows = rows.astype(np.float64)
    if rows.shape[1] == 0:
        return np.zeros((len(rows), 4))
    return np.stack([rows.mean(axis=1), rows.std(axis=1), rows.min(axis=1), rows.max(axis=1)], axis=1)


def decode(data: bytes, manifest: Manifest) -> Reference:
    """The bundle's self-test file as a ``Reference``.

    Raises:
        SelfTestError: unreadable, or arrays missing or of the wrong shape.
    """
    spec = manifest.selftest
    if spec is None:
        raise SelfTestError("the bundle has no self-test")
    arrays = load_npz(data)
    try:
        if spec.compact is None:
            return Reference(
                inputs={s.name: arrays[f"in{i}"] for i, s in enumerate(manifest.inputs)},
                full={s.name: arrays[f"out{o}"] for o, s in enumerate(manifest.outputs)},
            )
        c = spec.compact
        inputs = {s.name: _compact_input(arrays, i, s, c) for i, s in enumerate(manifest.inputs)}
        expected = {s.name: _expected(arrays, o, c) for o, s in enumerate(manifest.outputs)}
    except KeyError as exc:
        raise SelfTestError(f"the self-test file lacks {exc}") from None
    return Reference(inputs=inputs, compact=expected)


def _compact_input(arrays: Mapping[str, np.ndarray], i: int, spec: TensorInfo, c: CompactSelfTest) -> np.ndarray:
    if c.inputs == "coded":
        x = decode_input(arrays, i, spec)
    else:
        tail = tuple(int(d) for d in arrays[f"in{i}_shape"])
        lo, hi = c.ranges[i]
        x = generate_input(c.seed, i, spec.dtype, (c.samples, *tail), lo, hi)
    if x.ndim == 0 or len(x) != c.samples:
        raise SelfTestError(f"self-test input {spec.name!r} does not hold {c.samples} samples")
    return x


def _expected(arrays: Mapping[str, np.ndarray], o: int, c: CompactSelfTest) -> Expected:
    shape = tuple(int(d) for d in arrays[f"out{o}_shape"])
    size = int(np.prod(shape, dtype=np.int64)) // c.samples
    index = element_index(c.seed, o, size, c.elements)
    values, stats = arrays[f"out{o}_values"], arrays[f"out{o}_stats"]
    top1 = arrays.get(f"out{o}_top1")
    if values.shape != (c.samples, len(index)) or stats.shape != (c.samples, 4):
        raise SelfTestError(f"self-test output {o} holds values {values.shape} and stats {stats.shape}")
    return Expected(shape, index, values, stats.astype(np.float64), top1)


def judge(manifest: Manifest, ref: Reference, got: Mapping[str, np.ndarray]) -> SelfTestResult:
    """Compare stacked outputs ``got`` with the reference within the manifest's tolerances.

    Elements must match within atol + rtol·|expected|; the compact form's statistics within twice
    atol + rtol·|expected| (a mean of elements each within tolerance may move by up to that).
    """
    spec = manifest.selftest
    if spec is None:
        return SelfTestResult(True, 0.0, None, "no self-test in bundle")
    worst, close = 0.0, True
    have_top1: dict[str, np.ndarray] = {}
    for out in manifest.outputs:
        have = np.asarray(got[out.name])
        want_shape = ref.full[out.name].shape if ref.full else ref.compact[out.name].shape
        if have.shape != want_shape:
            return SelfTestResult(
                False, float("inf"), None, f"output {out.name} has shape {have.shape}, expected {want_shape}"
            )
        n = len(next(iter(ref.inputs.values())))
        rows = have.reshape(n, -1).astype(np.float64)
        have_top1[out.name] = rows.argmax(axis=1) if rows.shape[1] else np.zeros(n, np.int64)
        pairs = _pairs(ref, out.name, rows)
        for have_part, want_part, scale in pairs:
            err = np.abs(have_part - want_part)
            worst = max(worst, float(err.max(initial=0.0)))
            close &= bool((err <= scale * spec.atol + spec.rtol * np.abs(want_part)).all())
    agreement = _agreement(manifest, ref, have_top1)
    ok = close and (agreement is None or agreement >= spec.min_top1_agreement)
    detail = f"max abs error {worst:.3g} (atol {spec.atol:.3g})" + (
        f", top-1 agreement {agreement:.2f}" if agreement is not None else ""
    )
    return SelfTestResult(ok, worst, agreement, detail)


def _pairs(ref: Reference, name: str, rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(have, want, atol multiplier) to compare for one output."""
    if ref.full:
        return [(rows, ref.full[name].reshape(len(rows), -1).astype(np.float64), 1.0)]
    e = ref.compact[name]
    return [(rows[:, e.index], e.values.astype(np.float64), 1.0), (summary(rows), e.stats, 2.0)]


def _agreement(manifest: Manifest, ref: Reference, have_top1: Mapping[str, np.ndarray]) -> float | None:
    post = manifest.postprocess
    if post.kind != "classification" or post.output is None:
        return None
    if ref.full:
        want = ref.full[post.output]
        want_top1 = want.reshape(len(have_top1[post.output]), -1).argmax(axis=1)
    else:
        top1 = ref.compact[post.output].top1
        if top1 is None:
            return 0.0
        want_top1 = top1
    return float((have_top1[post.output] == want_top1).mean())
