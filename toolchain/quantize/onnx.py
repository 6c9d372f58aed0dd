"""ONNX post-training quantization with onnxruntime: dynamic, and int8 static QDQ.

The only module that imports ``onnxruntime.quantization``. Calibration samples are fed through a
``CalibrationDataReader`` that yields one sample at a time from a ``SampleStream``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization import qdq_loss_debug as qdq_debug

from device_agent.fsutil import atomic_write
from device_agent.runtime import load_runtime
from toolchain.calibration import SampleStream, open_samples
from toolchain.errors import ModelError, QuantizeError
from toolchain.quantize.options import OnnxOptions
from toolchain.sources import ModelKind

_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


class StreamReader(CalibrationDataReader):  # type: ignore[misc]
    """onnxruntime's calibration reader over a ``SampleStream``: one sample per ``get_next``."""

    def __init__(self, stream: SampleStream) -> None:
        self._stream = stream
        self._iter: Iterator[dict[str, np.ndarray]] = iter(stream)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._stream)


def float_onnx(source: Path, kind: ModelKind, workdir: Path, opset: int = 17) -> Path:
    """``source`` as a float ONNX file: itself when it is one, else converted (Keras/SavedModel) into ``workdir``.

    Raises:
        QuantizeError: a TFLite source (ONNX cannot be made from it).
    """
    if kind is ModelKind.ONNX:
        return source
    if kind is ModelKind.TFLITE:
        raise QuantizeError(f"{source}: ONNX quantization needs an ONNX, Keras or SavedModel source, not TFLite")
    from toolchain.backends.tensorflow import TFSource

    path = workdir / "float.onnx"
    path.write_bytes(TFSource(source, kind).to_onnx(opset))
    return path


def needed_opset(options: OnnxOptions) -> int:
    """The lowest opset whose QuantizeLinear/DequantizeLinear carry what ``options`` produce.

    Per-channel scales need the ``axis`` attribute (opset 13); dynamic quantization needs
    DynamicQuantizeLinear (opset 11); static per-tensor QDQ needs opset 10.
    """
    if options.per_channel:
        return 13
    return 11 if options.mode == "dynamic" else 10


def at_opset(model: Path, workdir: Path, options: OnnxOptions) -> Path:
    """``model`` itself, or upgraded with onnx's version converter when it is below ``needed_opset``.

    Raises:
        QuantizeError: the version converter cannot upgrade the model (one line naming the opsets).
    """
    import onnx

    from toolchain.convert import onnx_to_opset

    needed = needed_opset(options)
    try:
        opsets = onnx.load(str(model), load_external_data=False).opset_import
    except Exception:  # a corrupt file: ONNX Runtime's load, next, reports it in one line
        return model
    current = next((o.version for o in opsets if o.domain in ("", "ai.onnx")), needed)
    if current >= needed:
        return model
    path = workdir / f"opset{needed}.onnx"
    try:
        path.write_bytes(onnx_to_opset(model, needed))
    except ModelError as exc:
        what = "per-channel scales" if options.per_channel else f"--mode {options.mode}"
        raise QuantizeError(f"{what} need opset {needed}; {exc}") from None
    return path


def quantize(source: Path, kind: ModelKind, output: Path, options: OnnxOptions, calibration: Path | None) -> int:
    """Quantize ``source`` (ONNX, or Keras/SavedModel converted first) into ``output``; returns samples used.

    Raises:
        QuantizeError, ModelError: the model cannot be quantized.
        DataError: the calibration data does not fit the model.
    """
    with tempfile.TemporaryDirectory(prefix="edgetool-") as tmp:
        work = Path(tmp)
        model = at_opset(float_onnx(source, kind, work), work, options)
        inputs = load_runtime("onnx", model).inputs
        stream = open_samples(calibration, inputs, options.samples) if calibration else None
        quantize_file(model, work / "out.onnx", options, stream)
        atomic_write(output, (work / "out.onnx").read_bytes())
    return len(stream) if stream else 0


def quantize_file(model: Path, out: Path, options: OnnxOptions, stream: SampleStream | None) -> None:
    """Quantize the float ONNX file ``model`` into ``out``.

    Raises:
        QuantizeError: calibration is missing, or onnxruntime refuses the model.
    """
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):  # the entropy/percentile calibrators print progress
        _quantize_file(model, out, options, stream)


def _quantize_file(model: Path, out: Path, options: OnnxOptions, stream: SampleStream | None) -> None:
    try:
        prepared = _preprocess(model, out.with_suffix(".pre.onnx")) if options.preprocess else model
        if options.mode == "dynamic":
            quantize_dynamic(
                prepared,
                out,
                per_channel=options.per_channel,
                weight_type=QuantType.QInt8,
                reduce_range=options.reduce_range,
                nodes_to_exclude=list(options.float_nodes),
            )
            return
        if stream is None:
            raise QuantizeError("--mode int8 needs calibration data")
        quantize_static(
            prepared,
            out,
            StreamReader(stream),
            quant_format=QuantFormat.QDQ,
            per_channel=options.per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=_METHODS[options.calibrate],
            reduce_range=options.reduce_range,
            nodes_to_exclude=list(options.float_nodes),
            extra_options={"ActivationSymmetric": False},
        )
    except (QuantizeError, ModelError):
        raise
    except Exception as exc:  # onnxruntime.quantization raises bare Exceptions and onnx errors
        raise QuantizeError(f"onnxruntime could not quantize {model.name}: {str(exc).strip()[:300]}") from None


def _preprocess(model: Path, out: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(model), str(out), skip_symbolic_shape=True)
    return out


def layer_errors(float_model: Path, qdq_model: Path, stream: SampleStream) -> list[dict[str, Any]]:
    """Per-tensor error of a QDQ model against its float model (onnxruntime's qdq_loss_debug), worst first.

    Each row: ``layer`` (the node producing the tensor), ``tensor``, ``sqnr_db`` (float vs the quantized
    model's activation, lower is worse) and ``qdq_sqnr_db`` (the tensor's own quantize/dequantize loss),
    both as ``robust_sqnr``.
    """
    with tempfile.TemporaryDirectory(prefix="edgetool-") as tmp:
        f_aug, q_aug = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        qdq_debug.modify_model_output_intermediate_tensors(str(float_model), str(f_aug))
        qdq_debug.modify_model_output_intermediate_tensors(str(qdq_model), str(q_aug))
        f_act = qdq_debug.collect_activations(str(f_aug), StreamReader(stream))
        q_act = qdq_debug.collect_activations(str(q_aug), StreamReader(stream))
    matched = qdq_debug.create_activation_matching(q_act, f_act)
    errors = qdq_debug.compute_activation_error(matched, robust_sqnr)
    producers = _producers(qdq_model)
    rows = [
        {
            "layer": producers.get(name, name),
            "tensor": name,
            "sqnr_db": float(err.get("xmodel_err", float("inf"))),
            "qdq_sqnr_db": float(err.get("qdq_err", float("inf"))),
        }
        for name, err in errors.items()
    ]
    return sorted(rows, key=lambda r: r["sqnr_db"])


def robust_sqnr(reference: Sequence[np.ndarray], noisy: Sequence[np.ndarray]) -> float:
    """SQNR in dB with the signal power taken over the elements below the 95th percentile of |x|.

    Plain SQNR lets a few huge outlier channels hide that every other channel was rounded away;
    the trimmed signal power does not.
    """
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in reference])
    err = ref - np.concatenate([np.asarray(n, np.float64).ravel() for n in noisy])
    mag = np.abs(ref)
    typical = ref[mag <= np.percentile(mag, 95)] if ref.size else ref
    signal = float(np.mean(typical**2)) if typical.size else 0.0
    noise = float(np.mean(err**2)) if err.size else 0.0
    if noise == 0.0:
        return float("inf")
    return float(10 * np.log10(max(signal, 1e-30) / noise))


def _producers(model: Path) -> dict[str, str]:
    import onnx

    graph = onnx.load(str(model)).graph
    return {out: node.name for node in graph.node for out in node.output}
