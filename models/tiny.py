"""tiny-digits: a very small conv net on scikit-learn's bundled 8x8 digits, trained in seconds.

Used by the test-suite and the quick demo. Deterministic: fixed seeds, fixed split, op determinism.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolchain.npzio import save_npz

SEED = 0


def digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test), images as float32 in [0, 1], shape (N, 8, 8, 1)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return x[:split], y[:split], x[split:], y[split:]


def build(out: Path) -> dict[str, Path]:
    import keras

    from toolchain.backends.tensorflow import export_saved_model, keras_to_onnx, keras_to_tflite, tf  # log level first

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    x_train, y_train, x_test, y_test = digits_data()
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(10, activation="softmax", name="probs"),
        ],
        name="tiny_digits",
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=4, batch_size=64, verbose=0, shuffle=False)
    paths = {
        "keras": out / "model.keras",
        "tflite": out / "model.tflite",
        "tflite_int8": out / "model_int8.tflite",
        "onnx": out / "model.onnx",
        "calibration": out / "calib.npz",
        "eval": out / "eval.npz",
        "labels": out / "labels.txt",
    }
    model.save(paths["keras"])
    keras_to_tflite(model, paths["tflite"])
    keras_to_onnx(model, paths["onnx"])
    paths["tflite_int8"].write_bytes(_full_int8(tf, export_saved_model(model, out / "saved_model"), x_train[:100]))
    paths["calibration"].write_bytes(save_npz({"x": x_train[:200]}))
    paths["eval"].write_bytes(save_npz({"x": x_test, "y": y_test}))
    paths["labels"].write_text("".join(f"{d}\n" for d in range(10)))
    return paths


def _full_int8(tf: Any, saved_model: Path, calibration: np.ndarray) -> bytes:
    """Full-integer TFLite with int8 input and output (exercises the agent's quantized I/O path)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(len(calibration)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    data: bytes = converter.convert()
    return data
