"""Never write an invalid model: a produced model is loaded and run once in its device runtime first.

Converters and quantizers sometimes write files their own runtime refuses (an opset-12 model given
per-channel scales, a denylisted tensor the converter could not honour). The check runs the file the
way a device would, on one sample (the first calibration sample, or deterministic inputs of the
declared shapes), before the caller moves it to the output path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from device_agent.bundle.manifest import TensorInfo
from device_agent.errors import EdgefleetError
from device_agent.runtime import Runtime, load_runtime
from toolchain import qio
from toolchain.calibration import open_samples
from toolchain.errors import QuantizeError

DYNAMIC_DIM = 32  # size given to a dynamic non-leading dimension in synthetic inputs


def synthetic_feeds(inputs: tuple[TensorInfo, ...]) -> dict[str, np.ndarray]:
    """Deterministic inputs of the declared shapes (batch 1, other dynamic dims ``DYNAMIC_DIM``)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in inputs:
        shape = tuple(d if d > 0 else (1 if i == 0 else DYNAMIC_DIM) for i, d in enumerate(spec.shape))
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.random(shape).astype(dtype)
        else:
            feeds[spec.name] = np.zeros(shape, dtype)
    return feeds


def check_model(kind: str, model: Path, sample: Mapping[str, np.ndarray] | None, source: Path | None = None) -> None:
    """Load ``model`` in the ``kind`` runtime and run it once.

    ``sample``: one input sample as float data (quantized for integer inputs here). Without one,
    synthetic inputs of the declared shapes are used when the shapes say everything (only the batch
    dimension dynamic); a run failure then does not count when ``source`` (a model of the same kind)
    fails on them too. A model whose inputs have other dynamic dimensions is only loaded.

    Raises:
        QuantizeError: the model does not load, or fails on inputs its source runs.
    """
    try:
        runtime = load_runtime(kind, model)
    except EdgefleetError as exc:
        raise QuantizeError(f"the produced model does not load in its device runtime ({kind}): {exc}") from None
    if sample is None and not all(_declared(s) for s in runtime.inputs):
        return
    feeds = qio.feeds(runtime.inputs, sample) if sample is not None else synthetic_feeds(runtime.inputs)
    failure = _run(runtime, feeds)
    if failure is None:
        return
    if sample is None and source is not None and _run(load_runtime(kind, source), feeds) is not None:
        return  # the declared shapes alone do not make a runnable input; loading is what was checked
    raise QuantizeError(f"the produced model loads but fails to run in its device runtime ({kind}): {failure}")


def _declared(spec: TensorInfo) -> bool:
    """Whether synthetic data of ``spec``'s declared shape is a sensible input (float, only the batch dynamic)."""
    return bool(spec.shape) and all(d > 0 for d in spec.shape[1:]) and np.dtype(spec.dtype).kind in "fiu"


def _run(runtime: Runtime, feeds: Mapping[str, np.ndarray]) -> str | None:
    try:
        runtime.run(feeds)
    except Exception as exc:  # any runtime failure is the finding, reported in one line
        return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return None


def first_sample(data: Path | None, model: Path, kind: str) -> dict[str, np.ndarray] | None:
    """The first sample of ``data`` as float data for ``model``'s inputs (None without data)."""
    if data is None:
        return None
    specs = tuple(
        replace(s, dtype="float32", quantization=None) if s.quantization is not None else s
        for s in load_runtime(kind, model).inputs
    )
    return next(iter(open_samples(data, specs, 1)))
