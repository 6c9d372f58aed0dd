"""Host latency and peak memory of a model in the device runtime, measured in a child process.

The child imports only numpy and the device runtime, loads the model single-threaded, runs it on
deterministic inputs, and reports per-inference latencies and its RSS high-water mark before and
after loading the model. A child keeps TensorFlow (imported by the parent) out of the numbers.
``python -m toolchain.measure KIND MODEL RUNS`` prints the JSON.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device_agent.bundle.manifest import TensorInfo
from device_agent.errors import EdgefleetError
from toolchain.errors import MeasureError
from toolchain.npzio import save_npz

WARMUP = 5  # runs discarded before timing


@dataclass(frozen=True)
class Measurement:
    p50_ms: float
    p95_ms: float
    peak_rss_bytes: int  # whole process, runtime + model, after the timed runs
    model_rss_bytes: int  # growth of the high-water mark from loading the runtime library and the model, and running it
    runs: int


def measure(kind: str, model: Path, runs: int = 50, sample: Mapping[str, np.ndarray] | None = None) -> Measurement:
    """Measure ``model`` in a fresh child process, on ``sample`` (one input sample as float data) or on
    deterministic inputs of the declared shapes (which a model with dynamic dims may not accept).

    Raises:
        MeasureError: the child failed (its last error line is in the message).
    """
    with tempfile.TemporaryDirectory(prefix="edgetool-m-") as tmp:
        args = [sys.executable, "-m", "toolchain.measure", kind, str(model), str(runs)]
        if sample is not None:
            (Path(tmp) / "sample.npz").write_bytes(save_npz(sample))
            args.append(str(Path(tmp) / "sample.npz"))
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MeasureError(f"measuring {model.name} failed: {last[:300]}", proc.returncode)
    return Measurement(**json.loads(proc.stdout.strip().splitlines()[-1]))


def _rss() -> int:
    """This process's RSS high-water mark in bytes.

    ``VmHWM`` belongs to the process image, so unlike ``ru_maxrss`` it does not inherit the parent's
    peak across fork + exec. Falls back to ``ru_maxrss`` where /proc is missing (macOS: bytes).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _child(kind: str, model: str, runs: int, sample: str | None = None) -> dict[str, float | int]:
    from device_agent.runtime import load_runtime

    before = _rss()
    runtime = load_runtime(kind, model, threads=1)
    feeds = _sample_feeds(runtime.inputs, sample) if sample else _synthetic(runtime.inputs)
    times = []
    for i in range(WARMUP + runs):
        t0 = time.perf_counter()
        runtime.run(feeds)
        if i >= WARMUP:
            times.append((time.perf_counter() - t0) * 1000)
    peak = _rss()
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "peak_rss_bytes": peak,
        "model_rss_bytes": peak - before,
        "runs": runs,
    }


def _synthetic(inputs: Sequence[TensorInfo]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in inputs:
        shape = tuple(d if d > 0 else 1 for d in spec.shape)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.random(shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            feeds[spec.name] = rng.integers(max(info.min, -128), min(info.max, 127), shape).astype(dtype)
    return feeds


def _sample_feeds(inputs: Sequence[TensorInfo], sample: str) -> dict[str, np.ndarray]:
    from device_agent.runtime.base import quantize

    with np.load(sample, allow_pickle=False) as npz:
        return {s.name: quantize(npz[s.name], s).astype(s.dtype, copy=False) for s in inputs}


def _main() -> None:
    try:
        sample = sys.argv[4] if len(sys.argv) > 4 else None
        print(json.dumps(_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), sample)))
    except EdgefleetError as exc:
        print(f"{exc} [{exc.code}]", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    _main()
