"""The TensorFlow backend: the only toolchain module that imports tensorflow.

Keras models are traced through a ``tf.function`` with a named input signature so that both the
TFLite model (via its signature) and the ONNX model (via tf2onnx) expose the same tensor names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep C++ start-up chatter off the user's terminal
import tensorflow as tf

from device_agent.errors import ConfigError


def _specs(model: Any) -> list[Any]:
    return [tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=t.name.split(":")[0]) for t in model.inputs]


def serving_function(model: Any) -> Any:
    """A tf.function over ``model`` with input names from the Keras model and a dynamic batch,
    returning a dict keyed by output layer names."""
    out_names = [_output_name(t, i) for i, t in enumerate(model.outputs)]

    @tf.function(input_signature=_specs(model))
    def serve(*args: Any) -> dict[str, Any]:
        outputs = model(list(args) if len(args) > 1 else args[0])
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        return dict(zip(out_names, outputs, strict=True))

    return serve


def export_saved_model(model: Any, path: Path) -> Path:
    """Export a Keras model as a SavedModel whose ``serving_default`` signature has named outputs.

    Goes through keras.export.ExportArchive, which tracks the model's variables explicitly:
    handing a Keras 3 model to ``from_concrete_functions`` as ``trackable_obj`` silently converts
    it with re-initialized weights (tests/test_models.py guards against that).
    """
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serving_function(model), input_signature=_specs(model))
    archive.write_out(str(path), verbose=False)
    return path


def _output_name(tensor: Any, index: int) -> str:
    """The name of the layer producing ``tensor`` (Keras 3 tensor names are ``keras_tensor_N``)."""
    history = getattr(tensor, "_keras_history", None)
    op = getattr(history, "operation", None)
    return str(getattr(op, "name", None) or f"output_{index}")


def keras_to_tflite(model: Any, out: Path) -> bytes:
    """Convert a Keras model to a float32 TFLite flatbuffer and write it to ``out``."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(export_saved_model(model, Path(tmp) / "saved")))
        return _convert(converter, out)


def _convert(converter: Any, out: Path) -> bytes:
    try:
        data: bytes = converter.convert()
    except Exception as exc:  # the converter raises ConverterError and bare Exceptions
        raise ConfigError(f"TFLite conversion failed: {str(exc)[:500]}") from None
    out.write_bytes(data)
    return data


def keras_to_onnx(model: Any, out: Path, opset: int = 17) -> bytes:
    """Convert a Keras model to ONNX with tf2onnx and write it to ``out``."""
    import tf2onnx

    fn = serving_function(model)
    try:
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=opset)
    except Exception as exc:  # tf2onnx raises plain Exceptions for unsupported ops
        raise ConfigError(f"ONNX conversion failed: {str(exc)[:500]}") from None
    data: bytes = proto.SerializeToString()
    out.write_bytes(data)
    return data
