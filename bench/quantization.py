"""Quantization benchmark: every reference model in every mode, against its float32 model.

For each model and format: size ratio vs float32, top-1 accuracy delta (labelled eval sets),
top-1 agreement with float32, host latency ratio vs float32 (single-threaded, in the device
runtime, every variant measured in interleaved rounds in fresh child processes, median of the
per-round p50s), and the quantization time.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import numpy as np

from device_agent.runtime import load_runtime
from models import build
from toolchain.calibration import open_samples, stack
from toolchain.evaluate import predict, top1_agreement
from toolchain.measure import measure
from toolchain.quantize import OnnxOptions, QuantizeOptions, TFLiteOptions, quantize

MODELS = ("digits-cnn", "kws-cnn", "mobilenet-96")
VARIANTS: dict[str, list[tuple[str, QuantizeOptions]]] = {
    "tflite": [
        ("float16", TFLiteOptions("float16")),
        ("dynamic", TFLiteOptions("dynamic")),
        ("int8", TFLiteOptions("int8")),
        ("int16x8", TFLiteOptions("int16x8")),
    ],
    "onnx": [
        ("dynamic", OnnxOptions("dynamic")),
        ("int8", OnnxOptions("int8")),
        ("int8 per-channel", OnnxOptions("int8", per_channel=True)),
    ],
}
ROUNDS = 3
RUNS = 100  # timed inferences per round


def _scores(model: Path, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return predict(load_runtime(model.suffix.lstrip("."), model), x)


def _rows(name: str, paths: dict[str, Path], work: Path) -> list[str]:
    rows = []
    with np.load(paths["eval"]) as npz:
        labels = npz["y"] if "y" in npz.files else None
    for fmt, variants in VARIANTS.items():
        float_model = paths[fmt]
        x = stack(open_samples(paths["eval"], load_runtime(fmt, float_model).inputs))
        ref = _scores(float_model, x)
        ref_acc = float(np.mean(next(iter(ref.values())).argmax(1) == labels)) if labels is not None else None
        models = {"float32": (float_model, 0.0)}
        for label, options in variants:
            out = work / f"{name}-{label.replace(' ', '-')}.{fmt}"
            source = paths["keras"] if fmt == "tflite" else float_model
            q = quantize(source, out, options, paths["calibration"])
            models[label] = (out, q.seconds)
        p50: dict[str, list[float]] = {label: [] for label in models}
        for _ in range(ROUNDS):
            for label, (path, _) in models.items():
                p50[label].append(measure(fmt, path, RUNS).p50_ms)
        base_ms = statistics.median(p50["float32"])
        for label, (path, seconds) in models.items():
            scores = _scores(path, x)
            acc = float(np.mean(next(iter(scores.values())).argmax(1) == labels)) if labels is not None else None
            delta = "–" if acc is None or ref_acc is None else f"{100 * (acc - ref_acc):+.2f}"
            ms = statistics.median(p50[label])
            rows.append(
                f"| {name} | {fmt} | {label} | {path.stat().st_size / 1024:.1f} | "
                f"{path.stat().st_size / float_model.stat().st_size:.2f} | "
                f"{'–' if acc is None else f'{100 * acc:.2f}'} | {delta} | {100 * top1_agreement(scores, ref):.1f} | "
                f"{ms:.3f} | {ms / base_ms:.2f} | {'–' if label == 'float32' else f'{seconds:.1f}'} |"
            )
    return rows


def run() -> str:
    lines = [
        "## Quantization: size, accuracy and host latency per mode\n",
        "Each reference model (`python -m models build NAME`) in each mode, produced by the same code as "
        "`edgetool quantize` with its default calibration (200 samples of calib.npz), evaluated on eval.npz "
        "in the device runtime (ai-edge-litert / onnxruntime). digits-cnn: the 360 held-out digits; kws-cnn: "
        "400 synthetic spectrograms; mobilenet-96: 256 synthetic images. Latency: one "
        f"thread, one sample, median of {ROUNDS} interleaved rounds of {RUNS} runs (p50), each in a fresh "
        "child process; the ratio is what transfers to other machines, not the milliseconds.\n",
        "| model | format | mode | KiB | size vs float32 | top-1 % | Δ top-1 pp | agreement % | p50 ms "
        "| latency vs float32 | quantize s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        for name in MODELS:
            paths = build(name, Path(tmp) / name)
            lines += _rows(name, paths, Path(tmp))
        auto = _auto_rows(build("digits-outlier", Path(tmp) / "digits-outlier"), Path(tmp))
    lines.append(
        "\nAcceptance: digits-cnn int8 TFLite ≤ 0.30× float32 bytes and ONNX int8 ≤ 0.35×, each with "
        "a top-1 drop ≤ 1.0 pp (also asserted by tests/test_quantize_modes.py).\n\n"
        "Reading the latency column: on this x86 host LiteRT runs float32, float16 (dequantized at load) and int8 "
        "through XNNPACK, but int16x8 through reference kernels, hence its large ratio; onnxruntime's dynamic "
        "mode quantizes activations at every call, which costs more than it saves on models this small. "
        "ARM devices have optimised int8 kernels for both runtimes; re-measure there before choosing on speed."
    )
    return "\n".join(lines + auto)


def _auto_rows(paths: dict[str, Path], work: Path) -> list[str]:
    """``--mode auto --max-accuracy-drop 1`` on digits-outlier, every variant it tried."""
    from toolchain.quantize.auto import AutoOptions, auto_quantize

    lines = [
        "\n### Auto mode on digits-outlier (`--max-accuracy-drop 1`)\n",
        "digits-outlier has one activation with an outlier channel (models/outlier.py), so full int8 fails; "
        f"auto mode keeps the worst layers in float until the drop is within the bound. Latency: {RUNS} runs, "
        "one child process per variant.\n",
        "| format | variant | KiB | size vs float32 | top-1 % | drop pp | agreement % | p50 ms | latency vs float32 "
        "| chosen |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fmt in ("tflite", "onnx"):
        opts = AutoOptions(fmt, 1.0, paths["eval"], paths["calibration"], latency_runs=RUNS)  # type: ignore[arg-type]
        result = auto_quantize(paths["keras"], work / f"auto.{fmt}", opts)
        ref = result.reference_latency.p50_ms if result.reference_latency else float("nan")
        lines.append(
            f"| {fmt} | float32 | {result.reference_bytes / 1024:.1f} | 1.00 | "
            f"{100 * (result.reference_accuracy or 0):.2f} | – | 100.0 | {ref:.3f} | 1.00 | |"
        )
        for t in result.trials:
            ms = t.latency.p50_ms if t.latency else float("nan")
            lines.append(
                f"| {fmt} | {t.name} | {t.bytes / 1024:.1f} | {t.bytes / result.reference_bytes:.2f} | "
                f"{100 * (t.accuracy or 0):.2f} | {t.drop_pp:.2f} | {100 * t.agreement:.1f} | {ms:.3f} | "
                f"{ms / ref:.2f} | {'**chosen**' if t is result.chosen else ''} |"
            )
    return lines
