"""Helpers for the quantization tests: run edgetool in-process, run models in the device runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result

from device_agent.runtime import load_runtime
from toolchain import qio
from toolchain.cli import cli


def edgetool(*args: str | Path, ok: bool = True) -> Result:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, failure(result, args)
    return result


def failure(result: Result, args: tuple[str | Path, ...]) -> str:
    """What a failed command said (stdout and stderr, interleaved) and, for an uncaught exception, its traceback."""
    import traceback

    text = f"edgetool {' '.join(str(a) for a in args)} exited {result.exit_code}:\n{result.output}"
    if result.exc_info is not None and not isinstance(result.exception, SystemExit):
        text += "".join(traceback.format_exception(*result.exc_info))
    return text


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """A refused command: exit 1, one 'Error:' line naming the problem, no traceback."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def run_model(model: Path, x: np.ndarray) -> np.ndarray:
    """Float scores of ``model`` on float inputs ``x`` in the device runtime (quantized I/O handled)."""
    runtime = load_runtime(model.suffix.lstrip("."), model)
    (spec,) = runtime.inputs
    out_spec = runtime.outputs[0]
    scores = [
        qio.from_output(out_spec, runtime.run({spec.name: qio.to_input(spec, x[i : i + 1])})[out_spec.name])
        for i in range(len(x))
    ]
    return np.concatenate(scores)


def eval_set(paths: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    with np.load(paths["eval"]) as npz:
        return npz["x"], npz["y"]
