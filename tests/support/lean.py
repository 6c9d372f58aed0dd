"""Models that are wrong in ways a self-test must catch, and bundles carrying them.

Each keeps the original model's inputs and outputs exactly, so only the self-test can tell:
- ``corrupt_tflite``: one weight of a .tflite changed in place (its bytes found in the flatbuffer);
- ``perturb_onnx``: an ONNX model with one weight corrupted, one layer's weights shuffled (another
  model of the same shapes) or every weight rounded to int8 per tensor (a wrong quantization).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.bundle import PrivateKey, build_bundle, read_bundle


def swap_model(bundle: bytes, model: bytes, key: PrivateKey, version: str = "1.0.1") -> bytes:
    """``bundle`` with its model replaced by ``model`` (self-test and all else kept), signed again."""
    b = read_bundle(bundle)
    files = dict(b.files)
    files[b.manifest.model.path] = model
    manifest = replace(b.manifest, version=version, sequence=b.manifest.sequence + 1)
    return build_bundle(manifest, files, [key])


def corrupt_tflite(model: Path, tensor: str, delta: float = 0.5) -> bytes:
    """``model`` with the first element of constant tensor ``tensor`` moved by ``delta``."""
    from ai_edge_litert.interpreter import Interpreter

    data = bytearray(model.read_bytes())
    interpreter = Interpreter(model_content=bytes(data))
    (detail,) = [d for d in interpreter.get_tensor_details() if d["name"] == tensor]
    value = interpreter.get_tensor(detail["index"])
    offset = bytes(data).find(value.tobytes())
    assert offset > 0 and bytes(data).count(value.tobytes()) == 1, f"{tensor}'s bytes are not unique in the file"
    first = value.reshape(-1)[:1].copy()
    first += np.asarray(delta, first.dtype)
    data[offset : offset + first.nbytes] = first.tobytes()
    return bytes(data)


def _weights(model: Any) -> list[Any]:
    """Float weight tensors of more than 100 elements: initializers and Constant nodes' values."""
    from onnx import TensorProto, numpy_helper

    tensors = [*model.graph.initializer]
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    return [t for t in tensors if t.data_type == TensorProto.FLOAT and numpy_helper.to_array(t).size > 100]


def _one(w: np.ndarray) -> None:
    w.reshape(-1)[0] += 0.5


def _shuffle(w: np.ndarray) -> None:
    np.random.default_rng(0).shuffle(w.reshape(-1))


def _int8(w: np.ndarray) -> None:
    scale = float(np.abs(w).max()) / 127 or 1.0
    w[...] = np.round(w / scale) * scale


PERTURBATIONS: dict[str, tuple[Callable[[np.ndarray], None], str]] = {
    "first-weight-corrupted": (_one, "first"),
    "last-weight-corrupted": (_one, "last"),
    "layer-shuffled": (_shuffle, "middle"),
    "int8-weights": (_int8, "all"),
}


def perturb_onnx(model: Path, kind: str) -> bytes:
    """``model`` changed as ``PERTURBATIONS[kind]`` says."""
    import onnx
    from onnx import numpy_helper

    change, where = PERTURBATIONS[kind]
    m = onnx.load(str(model))
    weights = _weights(m)
    chosen = {"first": weights[:1], "last": weights[-1:], "middle": [weights[len(weights) // 2]], "all": weights}
    for tensor in chosen[where]:
        w = numpy_helper.to_array(tensor).copy()
        change(w)
        tensor.CopyFrom(numpy_helper.from_array(w.astype(np.float32), tensor.name))
    return bytes(m.SerializeToString())
