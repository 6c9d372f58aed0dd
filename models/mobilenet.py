"""mobilenet-96: a MobileNetV2 (alpha 0.35) for 96x96 RGB images, untrained.

For size and latency only: the weights are Keras' seeded initialisation (no download), so accuracy
is meaningless and eval.npz carries no labels; agreement with the float model is still measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models._common import SEED, seed_everything, write_all

CLASSES = 10


def build(out: Path) -> dict[str, Path]:
    import keras

    seed_everything()
    model = keras.applications.MobileNetV2(
        input_tensor=keras.Input((96, 96, 3), name="image"), alpha=0.35, weights=None, classes=CLASSES
    )
    # BatchNorm statistics at init (mean 0, var 1) do not match the activations; one short epoch on
    # smooth random images updates them, so activation ranges look like a trained net's.
    rng = np.random.default_rng(SEED)
    images = _smooth_images(rng, 320)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(images[:256], rng.integers(0, CLASSES, 256), epochs=1, batch_size=32, verbose=0, shuffle=False)
    labels = [f"class{i}" for i in range(CLASSES)]
    return write_all(model, out, calib=images[:128], eval_x=images[256:], eval_y=None, labels=labels)


def _smooth_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """Low-frequency random images in [-1, 1] (MobileNetV2's input range)."""
    coarse = rng.uniform(-1, 1, (n, 6, 6, 3)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)
