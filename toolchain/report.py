"""Quantization reports: a rich table for the terminal, ``report.json`` for machines (and for
``edgetool package --report``), and ``report.md`` with a plot for people who would rather look.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_agent import __version__
from device_agent.fsutil import atomic_write
from toolchain import fidelity
from toolchain.fidelity import OutputDiff

if TYPE_CHECKING:
    from toolchain.evaluate import Evaluation
    from toolchain.measure import Measurement
    from toolchain.quantize.auto import AutoResult

FORMAT = "edgefleet-quantization-report/1"


@dataclass(frozen=True)
class Variant:
    """One model in a report: the float reference or a quantized variant."""

    name: str
    bytes: int
    size_ratio: float  # vs the float reference
    accuracy: float | None  # top-1, 0..1
    drop_pp: float | None  # accuracy drop (labels) or disagreement, pp
    agreement: float | None  # top-1 agreement with the reference, 0..1
    cosine: float | None = None  # the worst output's cosine similarity with the float model
    sqnr_db: float | None = None  # the worst output's SQNR in dB (None: identical, or not measured)
    p50_ms: float | None = None
    p95_ms: float | None = None
    peak_rss_bytes: int | None = None
    quantize_seconds: float | None = None
    chosen: bool = False
    warning: str | None = None  # set when an output's cosine is below fidelity.LOW_COSINE

    @property
    def low_fidelity(self) -> bool:
        return self.warning is not None


def document(
    source: str, target_format: str, variants: Sequence[Variant], details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The report as a JSON-ready dict."""
    chosen = next((v.name for v in variants if v.chosen), None)
    return {
        "format": FORMAT,
        "edgefleet": __version__,
        "source": source,
        "target": target_format,
        "chosen": chosen,
        "variants": [asdict(v) for v in variants],
        **(details or {}),
    }


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


def rows(variants: Sequence[Variant]) -> list[list[str]]:
    """Table rows (strings) shared by the terminal table and the Markdown report."""
    return [
        [
            ("▶ " if v.chosen else "") + v.name,
            f"{v.bytes:,}",
            f"{v.size_ratio:.2f}×",
            _fmt(v.accuracy, ".2f", 100),
            _fmt(None if v.drop_pp is None else v.drop_pp + 0.0, "+.2f"),
            _fmt(v.agreement, ".1f", 100),
            _fmt(v.cosine, ".4f") + (" ⚠" if v.low_fidelity else ""),
            _fmt(v.sqnr_db, ".1f"),
            _fmt(v.p50_ms, ".3f"),
            _fmt(v.p95_ms, ".3f"),
            _fmt(None if v.peak_rss_bytes is None else v.peak_rss_bytes / (1 << 20), ".1f"),
            _fmt(v.quantize_seconds, ".1f"),
        ]
        for v in variants
    ]


HEADERS = [
    "variant",
    "bytes",
    "size",
    "top-1 %",
    "drop pp",
    "agree %",
    "cosine",
    "SQNR dB",
    "p50 ms",
    "p95 ms",
    "peak MiB",
    "quantize s",
]


def print_table(variants: Sequence[Variant], title: str) -> None:
    """Print the variants as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in rows(variants):
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 140).print(table)


def detail_lines(doc: dict[str, Any]) -> list[str]:
    """The lines printed under the table: per-output errors, the layers that lose most, and the outcome."""
    lines: list[str] = []
    ev = doc.get("evaluation")
    if isinstance(ev, dict):
        lines += _evaluation_lines(ev)
    lines += [v["warning"] for v in doc.get("variants", []) if v.get("warning")]
    if doc.get("reason"):
        lines.append(doc["reason"])
    elif doc.get("output"):
        lines.append(f"wrote {doc['output']} ({doc.get('bytes')} bytes)")
    return lines


def _evaluation_lines(ev: dict[str, Any]) -> list[str]:
    lines = [
        f"output {out['name']}: max |err| {out['max_abs_error']:.4g}, mean |err| {out['mean_abs_error']:.4g}, "
        f"cosine {out['cosine']:.6f}, SQNR {_db(out.get('sqnr_db'))}"
        for out in ev["outputs"]
    ]
    if ev.get("layers"):
        lines.append(f"layers that lose most ({ev['layer_note']}):")
        for row in ev["layers"]:
            metric = row.get("sqnr_db", row.get("mse", row.get("cosine_loss")))
            lines.append(f"  {row['layer']:<24} {metric:>12.4g}  {row['tensor']}")
    elif ev.get("layer_note"):
        lines.append(ev["layer_note"])
    return lines


def _db(value: float | None) -> str:
    return "exact" if value is None else f"{value:.1f} dB"


def write(out_dir: Path, doc: dict[str, Any], variants: Sequence[Variant]) -> dict[str, Path]:
    """Write report.json, report.md and report.png into ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "plot": out_dir / "report.png"}
    atomic_write(paths["json"], (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    if variants:
        _plot(paths["plot"], variants, doc.get("source", ""))
    else:
        del paths["plot"]  # nothing measured (quantize without --eval): no plot
    atomic_write(paths["markdown"], markdown(doc, variants, paths["plot"].name if variants else None).encode())
    return paths


def markdown(doc: dict[str, Any], variants: Sequence[Variant], plot: str | None) -> str:
    lines = [
        f"# Quantization report: {Path(str(doc.get('source', ''))).name}\n",
        f"- source: `{doc.get('source')}`",
        f"- target format: {doc.get('target')}",
        f"- chosen: **{doc.get('chosen') or '–'}**",
    ]
    if doc.get("reason"):
        lines.append(f"- why: {doc['reason']}")
    lines += [f"- **{v.warning}**" for v in variants if v.warning]
    lines += ["", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(variants)]
    lines.append(
        "\nsize: bytes vs the float model. drop: top-1 accuracy lost in percentage points (or, without "
        "labels, the share of samples whose top-1 differs); classifiers only. cosine and SQNR: the worst "
        "output's cosine similarity (1 is identical; ⚠ below 0.9) and signal-to-noise ratio against the float "
        "model. Latency: single-threaded, this host, device runtime."
    )
    outputs = doc.get("evaluation", {}).get("outputs") if isinstance(doc.get("evaluation"), dict) else None
    if outputs:
        lines += [
            "\n## Outputs\n",
            "| output | cosine | SQNR dB | max abs err | mean abs err |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| `{o['name']}` | {o['cosine']:.4f} | {_db(o.get('sqnr_db'))} | {o['max_abs_error']:.4g} | "
            f"{o['mean_abs_error']:.4g} |"
            for o in outputs
        ]
    layers = doc.get("evaluation", {}).get("layers") if isinstance(doc.get("evaluation"), dict) else None
    if layers:
        keys = list(layers[0])
        lines += ["\n## Layers that lose most\n", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_cell(row[k]) for k in keys) + " |" for row in layers]
    if plot:
        lines.append(f"\n![size, latency and accuracy per variant]({plot})")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else f"`{value}`" if isinstance(value, str) else str(value)


def _fidelity_panel(variants: Sequence[Variant]) -> tuple[str, list[float]]:
    """Top-1 drop for a classifier; else 1 - worst cosine (lower is better in both)."""
    if any(v.drop_pp is not None for v in variants):
        return "top-1 drop / disagreement (pp)", [v.drop_pp or 0.0 for v in variants]
    return "1 - worst output cosine", [1.0 - (v.cosine if v.cosine is not None else 1.0) for v in variants]


def _plot(path: Path, variants: Sequence[Variant], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = [v.name for v in variants]
    colors = ["tab:green" if v.chosen else "tab:blue" for v in variants]
    panels = [
        ("size (KiB)", [v.bytes / 1024 for v in variants]),
        ("latency p50 (ms, host)", [v.p50_ms or 0.0 for v in variants]),
        _fidelity_panel(variants),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.5 * len(variants) + 2.0))
    for ax, (label, values) in zip(axes, panels, strict=True):
        bars = ax.barh(names, values, color=colors)
        ax.bar_label(bars, fmt="%.3g", padding=2, fontsize=8)
        ax.set_xlabel(label)
        floor = 1e-3 if label.startswith(("latency", "1 -")) else 1.0  # keep an all-zero panel readable
        ax.set_xlim(min([*values, 0.0]) * 1.3, max([*values, floor]) * 1.3)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.invert_yaxis()
    for ax in axes[1:]:
        ax.set_yticklabels([])
    fig.suptitle(Path(title).name)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


@dataclass(frozen=True)
class Scores:
    """How one model did on the evaluation data, against the float reference."""

    accuracy: float | None  # top-1, 0..1
    drop_pp: float | None  # accuracy drop (labels) or disagreement, pp; None for a non-classifier
    agreement: float | None  # top-1 agreement with the reference, 0..1
    outputs: Sequence[OutputDiff] = ()

    @classmethod
    def reference(cls, accuracy: float | None, classifier: bool = True) -> Scores:
        """The float reference's own scores: no drop, full agreement (for a classifier)."""
        return cls(accuracy, 0.0, 1.0) if classifier else cls(None, None, None)


def from_evaluation(name: str, ev: Evaluation, quantize_seconds: float | None = None) -> list[Variant]:
    """The float reference and one candidate, from ``edgetool evaluate`` (or quantize --eval)."""
    ref, cand = ev.reference, ev.candidate
    classifier = ev.task == "classification"
    return [
        _variant("float32", ref.bytes, ref.bytes, Scores.reference(ref.accuracy, classifier), ref.latency),
        _variant(
            name,
            cand.bytes,
            ref.bytes,
            Scores(cand.accuracy, ev.drop_pp, ev.agreement, ev.outputs),
            cand.latency,
            seconds=quantize_seconds,
            chosen=True,
        ),
    ]


def from_auto(result: AutoResult) -> list[Variant]:
    """The float reference and every variant auto mode tried, the chosen one marked."""
    ref = result.reference_bytes
    ref_scores = Scores.reference(result.reference_accuracy, result.classifier)
    out = [_variant("float32", ref, ref, ref_scores, result.reference_latency)]
    out += [
        _variant(
            t.name,
            t.bytes,
            ref,
            Scores(t.accuracy, t.drop_pp, t.agreement, t.outputs),
            t.latency,
            seconds=t.seconds,
            chosen=t is result.chosen,
        )
        for t in result.trials
    ]
    return out


def _variant(
    name: str,
    size: int,
    ref_size: int,
    scores: Scores,
    latency: Measurement | None,
    *,
    seconds: float | None = None,
    chosen: bool = False,
) -> Variant:
    low = fidelity.worst(scores.outputs)
    sqnr = min((d.sqnr_db for d in scores.outputs), default=float("inf"))
    return Variant(
        name=name,
        bytes=size,
        size_ratio=size / ref_size if ref_size else 1.0,
        accuracy=scores.accuracy,
        drop_pp=scores.drop_pp,
        agreement=scores.agreement,
        cosine=1.0 if low is None else low.cosine,
        sqnr_db=sqnr if math.isfinite(sqnr) else None,
        p50_ms=latency.p50_ms if latency else None,
        p95_ms=latency.p95_ms if latency else None,
        peak_rss_bytes=latency.peak_rss_bytes if latency else None,
        quantize_seconds=seconds,
        chosen=chosen,
        warning=fidelity.warning(name, scores.outputs),
    )
