"""Shared fixtures: a real MQTT broker per test, session-cached tiny real models, release keys.

Broker choice: ``EDGEFLEET_TEST_BROKER=auto|mosquitto|embedded`` (or ``pytest --broker=...``).
``auto`` uses mosquitto when installed and falls back to the embedded amqtt broker, saying so in
the pytest header; ``make test-embedded`` runs the MQTT tests against the embedded broker.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from device_agent.bundle import PrivateKey, TrustStore
from fleet.broker import LocalBroker, mosquitto_binary, start_embedded, start_local_broker, start_mosquitto

if TYPE_CHECKING:
    from tests.support.agent_harness import ArtifactServer

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        default=os.environ.get("EDGEFLEET_TEST_BROKER", "auto"),
        choices=["auto", "mosquitto", "embedded"],
        help="MQTT broker for tests (default: mosquitto if installed, else embedded amqtt).",
    )


def pytest_report_header(config: pytest.Config) -> str:
    choice = config.getoption("--broker")
    if choice == "auto":
        choice = "mosquitto" if mosquitto_binary() else "embedded (mosquitto not found on PATH)"
    return f"edgefleet test broker: {choice}"


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalBroker]:
    """A fresh broker on a free loopback port, with its own config, stopped after the test."""
    with start_local_broker(request.config.getoption("--broker"), workdir=tmp_path / "broker") as b:
        yield b


@pytest.fixture(params=["mosquitto", "embedded"])
def each_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalBroker]:
    """The same test against mosquitto and against the embedded broker."""
    if request.param == "mosquitto" and mosquitto_binary() is None:
        pytest.skip("mosquitto binary not installed (.ci/run installs it)")
    start = start_mosquitto if request.param == "mosquitto" else start_embedded
    with start(workdir=tmp_path / "broker") as b:
        yield b


MODEL_FILES = {
    "keras": "model.keras",
    "tflite": "model.tflite",
    "onnx": "model.onnx",
    "calibration": "calib.npz",
    "eval": "eval.npz",
    "labels": "labels.txt",
}


def _models_fingerprint() -> str:
    h = hashlib.sha256()
    sources = sorted((ROOT / "models").glob("*.py"))
    for path in [*sources, ROOT / "toolchain/backends/tensorflow.py", ROOT / "toolchain/npzio.py"]:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build_reference_model(
    request: pytest.FixtureRequest, name: str, extra: dict[str, str] | None = None
) -> dict[str, Path]:
    """Build recipe ``name`` once, cached across runs by the recipes' source hash.

    Built in a child process so tensorflow never enters the test process for this. ``extra``
    names files (role → file) the recipe writes besides the common ones.
    """
    cache = Path(request.config.cache.mkdir("edgefleet-models")) / f"{name}-{_models_fingerprint()}"
    paths = {role: cache / file for role, file in {**MODEL_FILES, **(extra or {})}.items()}
    if not all(p.exists() for p in paths.values()):
        subprocess.run(
            [sys.executable, "-m", "models", "build", name, "--out", str(cache)],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
    return paths


@pytest.fixture(scope="session")
def tiny_models(request: pytest.FixtureRequest) -> dict[str, Path]:
    """tiny-digits as Keras, TFLite (float and full-integer int8) and ONNX with calib/eval data."""
    return build_reference_model(request, "tiny-digits", {"tflite_int8": "model_int8.tflite"})


@pytest.fixture(scope="session")
def digits_cnn(request: pytest.FixtureRequest) -> dict[str, Path]:
    """digits-cnn (the reference classifier, held-out eval split with labels)."""
    return build_reference_model(request, "digits-cnn")


@pytest.fixture(scope="session")
def digits_outlier(request: pytest.FixtureRequest) -> dict[str, Path]:
    """digits-outlier: full int8 breaks it, keeping two layers in float repairs it."""
    return build_reference_model(request, "digits-outlier")


@pytest.fixture(scope="session")
def third_party() -> dict[str, Path]:
    """Real third-party models (tests/support/thirdparty.py), installed into the venv by `make install`."""
    from tests.support.thirdparty import MODELS, installed

    return {name: installed(name) for name in MODELS}


@pytest.fixture(scope="session")
def release_key() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture(scope="session")
def trust(release_key: PrivateKey) -> TrustStore:
    return TrustStore.of([release_key.public_key])


@pytest.fixture
def key_files(tmp_path: Path, release_key: PrivateKey) -> tuple[Path, Path]:
    """The session release key written as files: (private .key, public .pub)."""
    key_path, pub_path = release_key.save(tmp_path / "keys" / "release")
    return key_path, pub_path


# --- fleet manager store: the same tests on SQLite and PostgreSQL ------------------------------

PG_URL = os.environ.get("EDGEFLEET_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_schema_url() -> tuple[str, object] | None:
    """A fresh schema in the test PostgreSQL (so parallel runs never collide), or None if unreachable."""
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        schema = f"ef_{uuid.uuid4().hex[:12]}"
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except Exception:  # any failure to reach it means: skip, and say so
        return None
    return f"{PG_URL}?options=-csearch_path%3D{schema}", (engine, schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL: a fresh SQLite file, or a fresh schema in the local PostgreSQL (skipped if unreachable)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    made = _pg_schema_url()
    if made is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} (set EDGEFLEET_TEST_PG)")
    url, (engine, schema) = made  # type: ignore[misc]
    try:
        yield url
    finally:
        import sqlalchemy as sa

        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ArtifactServer]:
    """An HTTP artifact server for device downloads, serving ``tmp_path / "artifacts"``."""
    from tests.support.agent_harness import ArtifactServer

    (tmp_path / "artifacts").mkdir()
    s = ArtifactServer(tmp_path / "artifacts")
    yield s
    s.close()


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs: a device's whole storage (the flashed tiny bundle, state, spool and one update)."""
    from tests.support.diskfs import tmpfs

    with tmpfs(tmp_path / "fs", "4m") as path:
        yield path
