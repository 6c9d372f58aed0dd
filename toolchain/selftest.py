"""Building a bundle's self-test: the full form, or the compact form when the full one would dwarf the model.

The full form (``edgefleet-bundle/1``) stores the reference inputs and every expected output. A
bundle must stay within its model's bytes plus ``max(64 KiB, 10 %)`` (``overhead_bound``); when the
full form breaks that, the compact form (``edgefleet-bundle/2``, read by device_agent/selftest.py)
keeps as much evidence as fits, strongest first: real samples coded as uint8 with 256 levels (all
of them, then half as many down to 1, with 4096, 1024, 256 or 64 output elements drawn per
output), then with 16, 4 and 2 levels (a page of text in 4 grey levels still reads as text to a
detector), and last up to 8 inputs the device generates from a seed (uniform noise, which many
models answer with a flat output: the weakest check, and ``edgetool package`` says so). Every
compact form also checks each sample's
mean, std, min and max over all output elements and, for a classifier, every sample's top-1 class:
a wrong model, a wrong quantization or a corrupted weight moves those even where the drawn
elements would not notice.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from device_agent.bundle import CompactSelfTest, SelfTest, TensorInfo
from device_agent.bundle.archive import FIXED_DATE
from device_agent.selftest import decode_input, element_index, generate_input, summary

PATH = "selftest.npz"
MIN_BOUND = 64 << 10  # bytes: the overhead a bundle may always add to its model
BOUND_FRACTION = 0.10  # of the model's bytes: the overhead a larger model may add
MAX_SAMPLES = 1024  # what the manifest allows
GENERATED_SAMPLES = 8
ELEMENTS = (4096, 1024, 256, 64)  # output elements drawn per output
LEVELS = (256, 16, 4, 2)  # levels real float inputs are coded with, finest first
DEFLATE_LEVEL = 6  # zlib's default: 9 takes 10x longer on coded images for 1-2 % fewer bytes
ZIP_MEMBER_BYTES = 30 + 46 + 2 * len(".npy")  # local and central headers of one member, besides its name
ZIP_END_BYTES = 22
FLOAT16_MAX = 60000.0  # larger magnitudes are stored as float32
Run = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class BuiltSelfTest:
    spec: SelfTest
    data: bytes


def overhead_bound(model_bytes: int) -> int:
    """The bytes a bundle may add to its model: max(64 KiB, 10 % of the model)."""
    return max(MIN_BOUND, int(BOUND_FRACTION * model_bytes))


def save_npz(arrays: Mapping[str, np.ndarray], *, deflate: bool) -> bytes:
    """An .npz (``numpy.load`` reads it) whose bytes depend only on the arrays (and, deflated, on zlib)."""
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name], order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = method
            zf.writestr(info, buf.getvalue(), compresslevel=DEFLATE_LEVEL if deflate else None)
    return out.getvalue()


def tolerances(specs: Sequence[TensorInfo], outputs: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """(atol, rtol): one LSB for integer outputs; for float outputs 1e-3 of the output range, enough for
    other CPUs and thread counts (XNNPACK reassociates sums), far too little to hide a different model."""
    quantized = any(np.dtype(s.dtype).kind in "iu" for s in specs)
    peak = max((float(np.abs(v.astype(np.float64)).max(initial=0.0)) for v in outputs.values()), default=1.0)
    return (1.0, 0.0) if quantized else (1e-3 * max(1.0, peak), 1e-3)


def full(
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    feeds: Mapping[str, np.ndarray],
    results: Mapping[str, np.ndarray],
) -> BuiltSelfTest:
    """The full form: every reference input and output, stored as they are."""
    arrays = {f"in{i}": feeds[s.name] for i, s in enumerate(inputs)}
    arrays |= {f"out{o}": results[s.name] for o, s in enumerate(outputs)}
    atol, rtol = tolerances(outputs, results)
    return BuiltSelfTest(SelfTest(PATH, atol=atol, rtol=rtol), save_npz(arrays, deflate=False))


@dataclass(frozen=True)
class Model:
    """What the compact form needs of the model: its tensors, a way to run stacked samples, its classifier output."""

    inputs: Sequence[TensorInfo]
    outputs: Sequence[TensorInfo]
    run: Run
    class_output: str | None


def compact(model: Model, real: Mapping[str, np.ndarray], budget: int, seed: int) -> BuiltSelfTest:
    """The strongest compact form within ``budget`` bytes (the smallest one when none fits)."""
    n0 = min(MAX_SAMPLES, len(next(iter(real.values()))))
    for levels in LEVELS:
        coded, decoded = _code_inputs(model.inputs, {k: v[:n0] for k, v in real.items()}, levels)
        best = _search(model, coded, decoded, CompactSelfTest(n0, seed, ELEMENTS[0], "coded"), budget)
        if len(best.data) <= budget:
            return best
    ranges = tuple(_range(real[s.name]) for s in model.inputs)
    shapes = {f"in{i}_shape": np.asarray(real[s.name].shape[1:], np.int64) for i, s in enumerate(model.inputs)}
    n = min(n0, GENERATED_SAMPLES)
    generated = {
        s.name: generate_input(seed, i, s.dtype, (n, *real[s.name].shape[1:]), *ranges[i])
        for i, s in enumerate(model.inputs)
    }
    return _search(model, shapes, generated, CompactSelfTest(n, seed, ELEMENTS[0], "generated", ranges), budget)


def _search(
    model: Model, stored: dict[str, np.ndarray], inputs: dict[str, np.ndarray], base: CompactSelfTest, budget: int
) -> BuiltSelfTest:
    outputs = model.run(inputs)
    atol, rtol = tolerances(model.outputs, outputs)
    candidates = [
        CompactSelfTest(n, base.seed, k, base.inputs, base.ranges)
        for n in sorted({base.samples >> shift for shift in range(base.samples.bit_length())}, reverse=True)
        for k in ELEMENTS
    ]
    sizes: dict[tuple[str, int], int] = {}  # deflated bytes of a member, by (name, samples)
    for params in candidates:
        arrays = {name: a[: params.samples] if _is_samples(name) else a for name, a in stored.items()}
        arrays |= _expected(model, outputs, params, base.samples)
        size = ZIP_END_BYTES + sum(_member_size(sizes, name, a, params) for name, a in arrays.items())
        if size <= budget or params is candidates[-1]:
            break
    spec = SelfTest(PATH, atol=atol, rtol=rtol, compact=params)
    return BuiltSelfTest(spec, save_npz(arrays, deflate=True))


def _member_size(cache: dict[tuple[str, int], int], name: str, array: np.ndarray, params: CompactSelfTest) -> int:
    """Bytes member ``name`` takes in the deflated .npz (an input's size depends only on the sample count)."""
    key = (name, params.samples if name.startswith("in") else -params.elements * 1024 - params.samples)
    if key not in cache:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.asarray(array, order="C"), allow_pickle=False)
        deflate = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        cache[key] = len(deflate.compress(buf.getvalue())) + len(deflate.flush()) + ZIP_MEMBER_BYTES + 2 * len(name)
    return cache[key]


def _is_samples(name: str) -> bool:
    """Whether a stored array holds samples along axis 0 (``in3``, not ``in3_lo``)."""
    return name.startswith("in") and name[2:].isdigit()


def _expected(model: Model, outputs: Mapping[str, np.ndarray], c: CompactSelfTest, n0: int) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for o, spec in enumerate(model.outputs):
        stacked = outputs[spec.name]
        stacked = stacked[: c.samples * (len(stacked) // n0)] if stacked.ndim else stacked
        rows = stacked.reshape(c.samples, -1)
        index = element_index(c.seed, o, rows.shape[1], c.elements)
        values = rows[:, index]
        if values.dtype.kind == "f" and not np.abs(values).max(initial=0.0) >= FLOAT16_MAX:
            values = values.astype(np.float16)
        arrays[f"out{o}_shape"] = np.asarray(stacked.shape, np.int64)
        arrays[f"out{o}_values"] = values
        arrays[f"out{o}_stats"] = summary(rows)
        if spec.name == model.class_output:
            arrays[f"out{o}_top1"] = rows.astype(np.float64).argmax(axis=1).astype(np.int64)
    return arrays


def _code_inputs(
    specs: Sequence[TensorInfo], inputs: Mapping[str, np.ndarray], levels: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Float inputs as uint8 codes of ``levels`` levels with lo/step (others as they are), and the inputs
    a device decodes from them. Fewer levels take fewer bytes once deflated, with no other decoder."""
    coded: dict[str, np.ndarray] = {}
    for i, spec in enumerate(specs):
        x = np.asarray(inputs[spec.name])
        if x.dtype.kind == "f" and x.size and np.isfinite(x).all():
            lo, hi = float(x.min()), float(x.max())
            step = np.float32((hi - lo) / (levels - 1)) or np.float32(1.0)
            q = np.clip(np.rint((x.astype(np.float64) - lo) / float(step)), 0, levels - 1)
            coded[f"in{i}"] = q.astype(np.uint8)
            coded[f"in{i}_lo"], coded[f"in{i}_step"] = np.asarray(lo, np.float32), np.asarray(step, np.float32)
        else:
            coded[f"in{i}"] = x
    decoded = {spec.name: decode_input(coded, i, spec) for i, spec in enumerate(specs)}
    return coded, decoded


def _range(x: np.ndarray) -> tuple[float, float]:
    """The [lo, hi] generated inputs are drawn from: the real samples' own range."""
    if x.size == 0 or (x.dtype.kind == "f" and not np.isfinite(x).all()):
        return (0.0, 1.0)
    if x.dtype.kind in "iu":
        lo, hi = int(x.min()), int(x.max())
        return (float(lo), float(min(hi, lo + (1 << 52))))
    return (float(x.min()), float(x.max()))
