"""digits-cnn: the reference image classifier, a two-conv net on scikit-learn's bundled 8x8 digits.

Trained on the fixed 80 % split of ``tiny.digits_data`` and evaluated on the held-out 20 % (360
images). Big enough (~75 k parameters) that weight bytes dominate the file, as in real models.
"""

from __future__ import annotations

from pathlib import Path

from models._common import seed_everything, write_all
from models.tiny import digits_data

EPOCHS = 30


def build(out: Path) -> dict[str, Path]:
    import keras

    seed_everything()
    x_train, y_train, x_test, y_test = digits_data()
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            layers.MaxPooling2D(2, name="pool"),
            layers.Flatten(name="flatten"),
            layers.Dense(128, activation="relu", name="fc"),
            layers.Dense(10, activation="softmax", name="probs"),
        ],
        name="digits_cnn",
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0, shuffle=False)
    return write_all(model, out, calib=x_train[:256], eval_x=x_test, eval_y=y_test, labels=[str(d) for d in range(10)])
