"""What every recipe writes: the Keras model, its float TFLite and ONNX conversions, data and labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.npzio import save_npz

SEED = 0


def seed_everything() -> None:
    """Fixed seeds and deterministic TF kernels, so a recipe builds the same model every time."""
    import keras

    from toolchain.backends.tensorflow import tf  # sets TF's log level first

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()


def write_all(
    model: Any,
    out: Path,
    *,
    calib: np.ndarray,
    eval_x: np.ndarray,
    eval_y: np.ndarray | None,
    labels: Sequence[str],
) -> dict[str, Path]:
    """Write model.keras, model.tflite, model.onnx, calib.npz, eval.npz and labels.txt into ``out``."""
    from toolchain.backends.tensorflow import keras_to_onnx, keras_to_tflite

    paths = {
        "keras": out / "model.keras",
        "tflite": out / "model.tflite",
        "onnx": out / "model.onnx",
        "calibration": out / "calib.npz",
        "eval": out / "eval.npz",
        "labels": out / "labels.txt",
    }
    model.save(paths["keras"])
    keras_to_tflite(model, paths["tflite"])
    keras_to_onnx(model, paths["onnx"])
    paths["calibration"].write_bytes(save_npz({"x": calib}))
    paths["eval"].write_bytes(save_npz({"x": eval_x} | ({"y": eval_y} if eval_y is not None else {})))
    paths["labels"].write_text("".join(f"{label}\n" for label in labels))
    return paths
