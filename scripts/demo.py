"""make demo: the current end-to-end path, shown as the commands a user would type.

Today: make a release key, build a tiny real model (trained on scikit-learn's digits), package
and sign it, verify it as a device would, and inspect it. The fleet demo grows from here.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "demo"
BIN = Path(sys.executable).parent


def step(title: str, *argv: str) -> None:
    print(f"\n== {title}\n$ {shlex.join(argv)}", flush=True)
    result = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=WORK, text=True, capture_output=True, check=False)
    print(
        (result.stdout + result.stderr)
        .rstrip()
        .replace("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n", "")
    )
    if result.returncode != 0:
        sys.exit(f"demo failed at: {title}")


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    step("make a release signing key", "edgetool", "keygen", "--out", "keys/release")
    print("\n== build the tiny-digits reference model (Keras → TFLite and ONNX)", flush=True)
    print("$ python -m models build tiny-digits --out models", flush=True)
    subprocess.run(
        [sys.executable, "-m", "models", "build", "tiny-digits", "--out", str(WORK / "models")], cwd=ROOT, check=True
    )
    step(
        "package and sign it",
        "edgetool", "package", "models/model.tflite", "--name", "digits", "--version", "1.0.0", "--sequence", "1",
        "--key", "keys/release.key", "--labels", "models/labels.txt", "--calibration", "models/calib.npz",
        "-o", "digits-1.0.0.efb",
    )  # fmt: skip
    step("verify it as a device would", "edgetool", "verify", "digits-1.0.0.efb", "--trust", "keys/release.pub")
    step("inspect the verified bundle", "edgetool", "inspect", "digits-1.0.0.efb", "--trust", "keys/release.pub")
    print(f"\nDone. Files are in {WORK.relative_to(ROOT)}/ — try `edgetool inspect --json` on the bundle.")


if __name__ == "__main__":
    main()
