"""How samples sit in a stacked array (self-test files, feeds): shared by the device and the toolchain.

An input whose first dimension is the batch (dynamic, or 1) stacks its samples along that axis:
samples of a ``[batch, 128]`` input are ``[N, 128]``. Any other input (a scalar, a recurrent state
``[2, batch, 128]``) stacks whole samples on a new leading axis: ``[N]``, ``[N, 2, 1, 128]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from device_agent.bundle.manifest import TensorInfo


def batch_first(spec: TensorInfo) -> bool:
    """Whether samples of ``spec`` stack along its own first (batch) axis."""
    return bool(spec.shape) and spec.shape[0] in (-1, 1)


def take(spec: TensorInfo, stacked: np.ndarray, i: int) -> np.ndarray:
    """Sample ``i`` of ``stacked`` as the model takes it (batch 1 for a batch-first input)."""
    return stacked[i : i + 1] if batch_first(spec) else np.asarray(stacked[i])


def join(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Per-sample outputs stacked: along their batch axis, or on a new axis for scalars."""
    return np.stack(parts) if parts and np.ndim(parts[0]) == 0 else np.concatenate(parts)


def per_sample(inputs: Sequence[TensorInfo]) -> bool:
    """Whether a model must run one sample at a time (some input does not stack along its batch)."""
    return not all(batch_first(s) for s in inputs)
