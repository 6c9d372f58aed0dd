"""digits-outlier: a small digits classifier with one activation-outlier channel, for testing auto mode.

A conv net is trained on the digits, then an exact "spread" layer is inserted before the classifier:
it passes the 64 hidden features through unchanged and adds one feature equal to 1000 x their sum,
which the classifier ignores (zero weights). The float model is unchanged, but one tensor now spans
~[0, 10^4] or more, so a per-tensor int8 scale rounds every ordinary feature to zero: full int8 falls
apart, and only keeping the affected layers in float recovers it. Outlier channels like this are
a known int8 failure mode of real networks; here it is built in on purpose and deterministically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models._common import seed_everything, write_all
from models.tiny import digits_data

OUTLIER_GAIN = 1000.0
FEATURES = 64


def build(out: Path) -> dict[str, Path]:
    import keras

    seed_everything()
    x_train, y_train, x_test, y_test = digits_data()
    layers = keras.layers
    conv = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")
    fc = layers.Dense(FEATURES, activation="relu", name="fc")
    head = layers.Dense(10, activation="softmax", name="head")
    trained = keras.Sequential([keras.Input((8, 8, 1), name="image"), conv, layers.Flatten(name="flatten"), fc, head])
    trained.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    trained.fit(x_train, y_train, epochs=6, batch_size=64, verbose=0, shuffle=False)

    spread = layers.Dense(FEATURES + 1, name="spread")
    probs = layers.Dense(10, activation="softmax", name="probs")
    model = keras.Sequential(
        [keras.Input((8, 8, 1), name="image"), conv, layers.Flatten(name="flatten"), fc, spread, probs],
        name="digits_outlier",
    )
    spread.set_weights(
        [np.concatenate([np.eye(FEATURES), np.full((FEATURES, 1), OUTLIER_GAIN)], axis=1), np.zeros(FEATURES + 1)]
    )
    kernel, bias = head.get_weights()
    probs.set_weights([np.concatenate([kernel, np.zeros((1, 10))]), bias])
    return write_all(model, out, calib=x_train[:256], eval_x=x_test, eval_y=y_test, labels=[str(d) for d in range(10)])
