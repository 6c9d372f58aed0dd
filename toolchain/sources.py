"""What kind of model a path holds, decided from the path alone (no heavy imports)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from toolchain.errors import ModelError


class ModelKind(StrEnum):
    KERAS = "keras"
    SAVEDMODEL = "savedmodel"
    TFLITE = "tflite"
    ONNX = "onnx"
    PT2 = "pt2"  # a PyTorch ExportedProgram saved with torch.export.save (edgefleet[torch])

    @property
    def is_float_source(self) -> bool:
        """A TensorFlow source the TFLite converter (and its quantizer) can start from."""
        return self in (ModelKind.KERAS, ModelKind.SAVEDMODEL)


_SUFFIXES = {
    ".keras": ModelKind.KERAS,
    ".h5": ModelKind.KERAS,
    ".tflite": ModelKind.TFLITE,
    ".onnx": ModelKind.ONNX,
    ".pt2": ModelKind.PT2,
}


def model_kind(path: Path) -> ModelKind:
    """The kind of model at ``path``: .keras/.h5, a SavedModel directory, .tflite, .onnx or .pt2.

    Raises:
        ModelError: the path does not exist or is not a model edgetool knows.
    """
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return ModelKind.SAVEDMODEL
        raise ModelError(f"{path} is a directory without saved_model.pb, not a SavedModel")
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise ModelError(
            f"{path}: unknown model type {path.suffix or '(no suffix)'}; use .keras, .h5, a SavedModel directory, "
            ".tflite, .onnx or .pt2 (torch.export.save)"
        ) from None
