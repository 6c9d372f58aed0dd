"""mobilenet-96: a MobileNetV2 (alpha 0.35) for 96x96 RGB images, briefly trained on synthetic images.

For size and latency first: a real MobileNetV2 graph (inverted residuals, depthwise convs, ReLU6,
batch norm folded at conversion). Its task is synthetic and easy — which of ten places (and
colour) holds a bright patch on a smooth random background — so it trains offline in about a
minute and its accuracy and top-1 agreement after quantization mean something (an untrained net's
near-uniform scores would make top-1 a coin toss).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models._common import SEED, seed_everything, write_all

CLASSES = 10
EPOCHS = 4
BN_MOMENTUM = 0.8  # Keras' MobileNetV2 uses 0.999: too slow for the moving averages to settle in 4 epochs


def images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images in [-1, 1] (MobileNetV2's input range), shape (n, 96, 96, 3), and their labels."""
    y = rng.integers(0, CLASSES, n)
    coarse = rng.uniform(-0.5, 0.5, (n, 6, 6, 3)).astype(np.float32)
    x = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)
    for i, label in enumerate(y):
        row, col = divmod(int(label), 5)
        x[i, 16 + 40 * row : 40 + 40 * row, 4 + 18 * col : 18 + 18 * col, label % 3] += 1.0
    return np.clip(x, -1.0, 1.0), y.astype(np.int64)


def build(out: Path) -> dict[str, Path]:
    import keras

    seed_everything()
    rng = np.random.default_rng(SEED)
    x_train, y_train = images(rng, 1024)
    x_test, y_test = images(rng, 256)
    model = keras.applications.MobileNetV2(
        input_tensor=keras.Input((96, 96, 3), name="image"), alpha=0.35, weights=None, classes=CLASSES
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0, shuffle=False)
    labels = [f"patch{i}" for i in range(CLASSES)]
    return write_all(model, out, calib=x_train[:128], eval_x=x_test, eval_y=y_test, labels=labels)
