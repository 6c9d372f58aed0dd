"""tiny-digits: a very small conv net on scikit-learn's bundled 8x8 digits, trained in seconds.

Used by the test-suite and the quick demo. Deterministic: fixed seeds, fixed split, op determinism.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models._common import SEED, seed_everything, write_all


def digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test), images as float32 in [0, 1], shape (N, 8, 8, 1).

    The split is fixed (seeded permutation, 80/20): the last 360 images are the held-out set.
    """
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

    from toolchain.quantize import TFLiteOptions, quantize

    seed_everything()
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
    paths = write_all(model, out, calib=x_train[:200], eval_x=x_test, eval_y=y_test, labels=[str(d) for d in range(10)])
    # Full-integer TFLite with int8 input and output (exercises the agent's quantized I/O path).
    paths["tflite_int8"] = quantize(
        paths["keras"], out / "model_int8.tflite", TFLiteOptions("int8", samples=100), paths["calibration"]
    ).output
    return paths
