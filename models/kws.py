"""kws-cnn: a keyword-spotting-shaped conv net (49 frames x 10 MFCC-like bins) on synthetic spectrograms.

Each of the four "keywords" is a distinct time-frequency pattern (rising chirp, falling chirp, a
steady tone, two bursts) at a random onset and level, plus background noise; generated from a fixed
seed, so the data and the trained model are the same on every machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models._common import SEED, seed_everything, write_all

FRAMES, BINS = 49, 10
LABELS = ("up", "down", "tone", "burst")


def _pattern(kind: int, onset: int, length: int) -> np.ndarray:
    spec = np.zeros((FRAMES, BINS), np.float32)
    for t in range(length):
        frame = onset + t
        if frame >= FRAMES:
            break
        if kind == 0:
            spec[frame, min(BINS - 1, t * BINS // length)] = 1.0
        elif kind == 1:
            spec[frame, max(0, BINS - 1 - t * BINS // length)] = 1.0
        elif kind == 2:
            spec[frame, BINS // 2] = 1.0
        elif t % 10 < 4:
            spec[frame, :] = 0.6
    return spec


def spectrograms(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` labelled spectrograms, shape (n, 49, 10, 1) float32, labels int64 in [0, 4)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(LABELS), n)
    x = np.empty((n, FRAMES, BINS, 1), np.float32)
    for i, kind in enumerate(y):
        length = int(rng.integers(15, 30))
        onset = int(rng.integers(0, FRAMES - length))
        level = rng.uniform(0.5, 1.5)
        x[i, ..., 0] = level * _pattern(int(kind), onset, length) + rng.normal(0, 0.25, (FRAMES, BINS))
    return x, y.astype(np.int64)


def build(out: Path) -> dict[str, Path]:
    import keras

    seed_everything()
    x_train, y_train = spectrograms(2000, SEED)
    x_test, y_test = spectrograms(400, SEED + 1)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((FRAMES, BINS, 1), name="spectrogram"),
            layers.Conv2D(16, (5, 3), padding="same", activation="relu", name="conv1"),
            layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw2"),
            layers.Conv2D(32, 1, activation="relu", name="pw2"),
            layers.MaxPooling2D((2, 1), name="pool"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3"),
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dense(len(LABELS), activation="softmax", name="probs"),
        ],
        name="kws_cnn",
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=8, batch_size=64, verbose=0, shuffle=False)
    return write_all(model, out, calib=x_train[:256], eval_x=x_test, eval_y=y_test, labels=LABELS)
