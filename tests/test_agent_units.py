"""Pure pieces of the agent, tested directly: probation verdicts, config, state, recovery, fetcher, PSI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from device_agent.config import AgentConfig, DeviceSection, ProbationSection, parse_config
from device_agent.errors import (
    ConfigError,
    DownloadError,
    DownloadHashError,
    DownloadTooLargeError,
    NoVerifiedModelError,
    StateError,
)
from device_agent.fetch import FetchConfig, HttpFetcher
from device_agent.home import DeviceState, Home
from device_agent.stats import Snapshot, Window, psi
from device_agent.updater import Updater, probation_verdict
from fleet.sim.fetch import KeepAliveHttpFetcher
from tests.support.agent_harness import ArtifactServer, package_tiny
from toolchain.cli import cli as edgetool
from toolchain.flash import FlashOptions, flash

CFG = ProbationSection(min_inferences=100, seconds=60, max_error_rate=0.02, latency_budget_ms=10, max_latency_ratio=2.0)


def snap(n: int, errors: int = 0, p95: float = 1.0) -> Snapshot:
    return Snapshot(n, errors, 1.0, {"p50": p95 / 2, "p95": p95, "p99": p95}, None, {}, {})


@pytest.mark.parametrize(
    ("s", "baseline", "elapsed", "verdict", "reason"),
    [
        (snap(5), None, 1, "wait", ""),
        (snap(100), None, 1, "commit", "100 inferences"),
        (snap(3), None, 61, "commit", "3 inferences in 61 s"),
        (snap(50, errors=5), None, 1, "rollback", "probation-errors"),
        (snap(50, p95=12.0), None, 1, "rollback", "probation-latency: p95 12.00 ms > budget"),
        (snap(50, p95=9.0), 2.0, 1, "rollback", "2.0x the previous model"),
        (snap(50, p95=3.9), 2.0, 1, "wait", ""),
        (snap(50, p95=4.5), 0.2, 1, "wait", ""),  # 22x, but within min_latency_delta_ms: jitter
        (Snapshot(50, 0, 1.0, {"p50": 0.1, "p95": 8.0}, None, {}, {}), 0.5, 1, "wait", ""),  # a tail stall only
        (snap(10, errors=10), None, 1, "wait", ""),  # too few samples to judge yet
    ],
)
def test_probation_verdict(s: Snapshot, baseline: float | None, elapsed: float, verdict: str, reason: str) -> None:
    got, why = probation_verdict(s, CFG, baseline, elapsed)
    assert got == verdict and reason in why


def test_config_round_trip_and_errors() -> None:
    cfg = AgentConfig(device=DeviceSection(id="cam-1", tags=("a", "b")), probation=CFG)
    assert parse_config(cfg.to_toml()) == cfg
    for text, message in [
        ("[device]\nid = 'Bad_Id'\n", "device.id"),
        ("[device]\nid = 'x'\n[bogus]\n", "unknown section"),
        ("[device]\nid = 'x'\nram = 1\n", "unknown setting"),
        ("[device]\nid = 'x'\n[telemetry]\ninterval_s = 'fast'\n", "telemetry.interval_s must be float"),
        ("[broker]\nurl = 'mqtt://h'\n", "[device] section"),
        ("[device\n", "not valid TOML"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            parse_config(text)


def test_state_parsing_and_bounds() -> None:
    with pytest.raises(StateError):
        DeviceState.from_json(b'{"active": "c"}')
    with pytest.raises(StateError):
        DeviceState.from_json(b"\x00garbage")
    s = DeviceState()
    for i in range(300):
        s.remember_deployment(f"d{i}", "QUEUED")
        s.remember_request(f"r{i}")
    assert len(s.deployments) == 64 and "d299" in s.deployments and len(s.requests) == 256
    assert DeviceState.from_json(s.to_json()) == s


@pytest.fixture
def flashed(tmp_path: Path, tiny_models, release_key, key_files) -> Home:
    bundle = tmp_path / "v1.efb"
    bundle.write_bytes(package_tiny(tiny_models, release_key, "1.0.0", 1))
    return flash(
        bundle, tmp_path / "dev", FlashOptions(device_id="dev-1", broker="mqtt://127.0.0.1:1", trust=[key_files[1]])
    )


def _updater(home: Home) -> Updater:
    from device_agent.bundle import TrustStore
    from device_agent.config import load_config

    return Updater(home, load_config(home.config), TrustStore.from_paths([home.trust]), HttpFetcher())


def test_boot_recovers_a_missing_or_corrupt_state_file(flashed: Home) -> None:
    flashed.state_file.write_bytes(b"{truncated")
    model = _updater(flashed).boot()
    assert model.manifest.version == "1.0.0"
    assert flashed.load_state().committed == {"digits": 1}
    flashed.state_file.unlink()
    assert _updater(flashed).boot().slot == "a"


def test_boot_falls_back_when_the_active_slot_no_longer_verifies(flashed: Home) -> None:
    import shutil

    flashed.slot("b").parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(flashed.slot("a"), flashed.slot("b"))
    state = flashed.load_state()
    state.previous = "b"
    flashed.save_state(state)
    data = bytearray(flashed.slot("a").read_bytes())
    data[len(data) // 3] ^= 0xFF  # bit rot in the active slot
    flashed.slot("a").write_bytes(bytes(data))
    assert _updater(flashed).boot().slot == "b"
    assert flashed.load_state().active == "b"
    flashed.slot("b").write_bytes(bytes(data))
    with pytest.raises(NoVerifiedModelError):
        _updater(flashed).boot()


def test_flash_refuses_untrusted_bundles_and_existing_homes(tmp_path: Path, flashed: Home, key_files) -> None:
    from device_agent.bundle import PrivateKey

    other_pub = PrivateKey.generate().save(tmp_path / "other")[1]
    args = ["flash", str(flashed.slot("a")), "--device-id", "dev-2", "--broker", "mqtt://127.0.0.1:1883"]
    result = CliRunner().invoke(edgetool, [*args, "--target", str(tmp_path / "x"), "--trust", str(other_pub)])
    assert result.exit_code == 1 and "[unknown-key]" in result.output
    result = CliRunner().invoke(edgetool, [*args, "--target", str(flashed.root), "--trust", str(key_files[1])])
    assert result.exit_code == 1 and "--force" in result.output
    result = CliRunner().invoke(
        edgetool, [*args, "--target", str(flashed.root), "--trust", str(key_files[1]), "--force"]
    )
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("kind", [HttpFetcher, KeepAliveHttpFetcher])
def test_fetcher_limits(tmp_path: Path, kind: type[HttpFetcher]) -> None:
    (tmp_path / "srv").mkdir()
    server = ArtifactServer(tmp_path / "srv")
    data = bytes(range(256)) * 100
    url, sha, size = server.publish("a.bin", data)
    fetcher = kind(FetchConfig(retries=2, backoff_s=0.01, max_bytes=1 << 20), sleep=lambda s: None)
    try:
        assert fetcher.download(url, tmp_path / "ok.bin", size, sha).read_bytes() == data
        assert fetcher.download(url, tmp_path / "again.bin", size, sha).read_bytes() == data  # connection reused
        with pytest.raises(DownloadTooLargeError):
            fetcher.download(url, tmp_path / "a1.bin", size - 10, hashlib.sha256(data[:-10]).hexdigest())
        with pytest.raises(DownloadHashError):
            fetcher.download(url, tmp_path / "a2.bin", size, "0" * 64)
        with pytest.raises(DownloadError, match="HTTP 404"):
            fetcher.download(server.url("missing"), tmp_path / "a3.bin", 10, "0" * 64)
        with pytest.raises(DownloadTooLargeError, match="cap"):
            fetcher.download(url, tmp_path / "a4.bin", 2 << 20, sha)
        assert not list(tmp_path.glob("a[0-9].bin"))  # only resumable .part files remain, never a complete-looking file
    finally:
        server.close()


def test_keepalive_fetcher_resumes_a_cut_download_and_refuses_https(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    server = ArtifactServer(tmp_path / "srv", drop_after=1000)
    data = bytes(range(256)) * 40
    url, sha, size = server.publish("a.bin", data)
    fetcher = KeepAliveHttpFetcher(FetchConfig(retries=2, backoff_s=0.01), sleep=lambda s: None)
    try:
        assert fetcher.download(url, tmp_path / "a.bin", size, sha).read_bytes() == data
        assert server.requests[-1][1] == "bytes=1000-"  # resumed where the connection broke
        with pytest.raises(DownloadError, match="only http"):
            fetcher.download("https://example.invalid/a.bin", tmp_path / "b.bin", 10, "0" * 64)
    finally:
        server.close()


def test_psi_detects_drift() -> None:
    expected = [0.25, 0.25, 0.25, 0.25]
    assert psi(expected, np.array([250, 250, 250, 250])) < 1e-6
    assert psi(expected, np.array([700, 100, 100, 100])) > 0.5
    w = Window(drift_ref={"inputs": {"x": {"edges": [0.25, 0.5, 0.75], "fractions": expected}}})
    w.record_tensors({"input:x": np.random.default_rng(0).random(4000)})
    assert w.snapshot(1.0).psi["input:x"] < 0.01
    w.record_tensors({"input:x": np.full(4000, 0.9)})
    assert w.snapshot(1.0).psi["input:x"] > 0.5


def test_a_single_samples_prediction_stats_are_the_batch_path_s() -> None:
    """``record_one`` (the engine's path for one sample, with Python scalars) counts what ``record`` counts."""
    one, many = Window(), Window()
    rng = np.random.default_rng(2)
    for _ in range(300):
        top1, conf = int(rng.integers(0, 5)), float(rng.random())
        one.record_one(0.001, top1, conf)
        many.record(0.001, top1=np.array([top1]), conf=np.array([conf], np.float32))
    a, b = one.snapshot(1.0), many.snapshot(1.0)
    assert one.classes == many.classes and one.inferences == many.inferences == 300
    assert a.conf_mean == pytest.approx(b.conf_mean, abs=1e-6) and a.conf_mean is not None


def test_reconnect_backoff_doubles_with_jitter_and_caps() -> None:
    import random

    from device_agent.agent import Backoff

    b = Backoff(1.0, 8.0, random.Random(1))
    delays = [b.next_delay() for _ in range(6)]
    for delay, step in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert step / 2 <= delay <= step
    assert len(set(delays)) == 6  # jittered, not lockstep
    b.reset()
    assert b.next_delay() <= 1.0


def test_the_core_decides_without_threads_or_a_broker(flashed: Home) -> None:
    """Commands in, actions and queued events out: each request id once; a ping asks for info."""
    from device_agent import protocol as P
    from device_agent.config import load_config
    from device_agent.core import Action, AgentCore

    notified: list[int] = []
    core = AgentCore(flashed, load_config(flashed.config), notify=lambda: notified.append(1))
    core.boot()
    assert core.handle_command(P.PingCommand("r-1")) is Action.PUBLISH_INFO
    assert core.handle_command(P.PingCommand("r-1")) is Action.NONE  # acted on once
    deploy = P.DeployCommand("r-2", "dep-1", "http://127.0.0.1:9/x.efb", "0" * 64, 10)
    assert core.handle_command(deploy) is Action.DEPLOY
    assert [e.state for e in core.events] == [P.DeploymentState.QUEUED] and notified == [1]
    assert core.handle_command(P.RollbackCommand("r-3", "dep-1")) is Action.DEPLOY  # cancels the pending one
    assert core.telemetry_point().values["seq"] == 1
    assert core.info().model is not None and core.info().model.version == "1.0.0"


def test_update_hooks_see_every_step_and_can_replace_the_selftest_result(
    flashed: Home, tmp_path: Path, tiny_models, release_key
) -> None:
    from device_agent import protocol as P
    from device_agent.config import load_config
    from device_agent.core import AgentCore, AgentParts
    from device_agent.hooks import UpdateHooks
    from device_agent.model import LoadedModel
    from device_agent.selftest import SelfTestResult

    class Recording(UpdateHooks):
        def __init__(self) -> None:
            self.steps: list[str] = []

        def after_step(self, deployment_id: str, state: P.DeploymentState) -> None:
            self.steps.append(state.value)

        def after_selftest(self, model: LoadedModel, result: SelfTestResult) -> SelfTestResult:
            return SelfTestResult(False, result.max_abs_error, result.top1_agreement, "refused by a hook")

    hooks = Recording()
    core = AgentCore(flashed, load_config(flashed.config), AgentParts(hooks=hooks))
    core.boot()
    (tmp_path / "srv").mkdir()
    server = ArtifactServer(tmp_path / "srv")
    try:
        url, sha, size = server.publish("v2.efb", package_tiny(tiny_models, release_key, "1.1.0", 2))
        core.handle_command(P.DeployCommand("r-1", "dep-1", url, sha, size))
        assert core.run_deployment()
    finally:
        server.close()
    assert hooks.steps == ["DOWNLOADING", "VERIFYING", "INSTALLING", "SELFTEST"]
    last = core.events[-1]
    assert (last.state, last.reason, last.detail) == (P.DeploymentState.ROLLED_BACK, "selftest", "refused by a hook")
