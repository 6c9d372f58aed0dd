"""Full disks: a real agent on a real, small tmpfs home degrades (FAILED ``no-space``, telemetry dropped
and counted) and never dies; when space returns it updates again without a restart."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from device_agent import protocol as P
from device_agent.agent import Agent
from device_agent.api import AgentClient
from device_agent.bundle import PrivateKey
from device_agent.config import load_config
from device_agent.core import AgentParts
from device_agent.home import Home
from device_agent.hooks import UpdateHooks
from device_agent.spool import Spool
from fleet.broker import LocalBroker
from tests.support.agent_harness import (
    TERMINAL,
    Watcher,
    flash_device,
    package_tiny,
    send_command,
    send_deploy,
)
from tests.support.diskfs import fill, free_bytes
from tests.support.processes import background
from toolchain.packaging import PackageOptions, package

S = P.DeploymentState


@pytest.fixture(scope="module")
def bundles(tiny_models: dict[str, Path], digits_cnn: dict[str, Path], release_key: PrivateKey) -> dict[str, bytes]:
    big = PackageOptions(
        name="digits",
        version="2.0.0",
        sequence=2,
        keys=[release_key],
        labels=digits_cnn["labels"],
        calibration=digits_cnn["calibration"],
    )
    return {
        "v1": package_tiny(tiny_models, release_key, "1.0.0", 1),
        "v2": package_tiny(tiny_models, release_key, "2.0.0", 2),
        "big": package(digits_cnn["tflite"], big),  # larger than the ~100 KB left free below
    }


def serving_version(home: Home) -> str:
    info = home.read_run_info()
    assert info and info["api"], "the agent wrote no run file"
    x = np.zeros((1, 8, 8, 1), np.float32)
    return str(AgentClient(str(info["api"]), timeout=30).predict({"image": x})["model"]["version"])


def telemetry_after(watcher: Watcher, n: int) -> None:
    """Wait for two more telemetry points than ``n``: the agent's loop and MQTT session are alive."""
    watcher.wait(lambda: len(watcher.telemetry) >= n + 2, timeout=30)


def test_full_disk_fails_no_space_and_the_same_release_succeeds_once_space_returns(
    tmp_path, fs, broker: LocalBroker, server, bundles, key_files
) -> None:
    home = flash_device(fs, bundles["v1"], broker.url, key_files[1])
    watcher = Watcher(broker.url)
    with background(["edge-agent", "run", "--home", str(home.root)], tmp_path / "agent.log") as proc:
        watcher.wait(lambda: watcher.status.get("dev-1") == "online")
        filler = fill(fs, leave=100_000)
        url, sha, size = server.publish("big.efb", bundles["big"])
        assert size > free_bytes(fs)
        dep = send_deploy(broker.url, "test", "dev-1", url, sha, size)
        ev = watcher.wait_event(dep, TERMINAL, timeout=10)
        assert (ev.state, ev.reason) == (S.FAILED, "no-space")
        assert f"needs {size + (1 << 20)} bytes" in ev.detail  # the download (installed by rename) + margin
        telemetry_after(watcher, len(watcher.telemetry))
        assert proc.poll() is None
        assert serving_version(home) == "1.0.0"
        assert not list(home.downloads.iterdir())
        filler.unlink()
        again = send_deploy(broker.url, "test", "dev-1", url, sha, size)  # same release, new deployment id
        assert watcher.wait_event(again, TERMINAL, timeout=90).state == S.SUCCEEDED
        assert proc.poll() is None
        assert serving_version(home) == "2.0.0"
    watcher.close()


def test_a_disk_with_no_byte_free_keeps_the_agent_answering_commands_and_serving(
    tmp_path, fs, broker: LocalBroker, server, bundles, key_files
) -> None:
    home = flash_device(fs, bundles["v1"], broker.url, key_files[1])
    watcher = Watcher(broker.url)
    with background(["edge-agent", "run", "--home", str(home.root)], tmp_path / "agent.log") as proc:
        watcher.wait(lambda: watcher.status.get("dev-1") == "online")
        filler = fill(fs, leave=0)
        for i in range(3):  # each command writes state.json: ENOSPC used to end the supervisor loop
            send_command(broker.url, "test", "dev-1", P.PingCommand(request_id=f"ping-{i}"))
        url, sha, size = server.publish("v2.efb", bundles["v2"])
        dep = send_deploy(broker.url, "test", "dev-1", url, sha, size)
        ev = watcher.wait_event(dep, TERMINAL, timeout=10)
        assert (ev.state, ev.reason) == (S.FAILED, "no-space")
        telemetry_after(watcher, len(watcher.telemetry))
        assert proc.poll() is None
        assert serving_version(home) == "1.0.0"
        filler.unlink()
        again = send_deploy(broker.url, "test", "dev-1", url, sha, size)
        assert watcher.wait_event(again, TERMINAL, timeout=60).state == S.SUCCEEDED
        assert watcher.states(again)[0] == "QUEUED"  # not REJECTED busy: nothing was left pending
    watcher.close()


class FillWhenDownloading(UpdateHooks):
    """Fills the disk once the free-space check has passed, so the download itself meets ENOSPC."""

    def __init__(self, fs: Path) -> None:
        self.fs, self.armed = fs, True
        self.filler: Path | None = None

    def after_step(self, deployment_id: str, state: P.DeploymentState) -> None:
        if self.armed and state is P.DeploymentState.DOWNLOADING:
            self.armed = False
            self.filler = fill(self.fs, leave=0)


def test_enospc_in_the_middle_of_a_download_ends_the_deployment_and_removes_the_partial_file(
    fs, broker: LocalBroker, server, bundles, key_files
) -> None:
    home = flash_device(fs, bundles["v1"], broker.url, key_files[1])
    hooks = FillWhenDownloading(fs)
    agent = Agent(home, load_config(home.config), parts=AgentParts(hooks=hooks))
    agent.start()
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    watcher = Watcher(broker.url)
    try:
        watcher.wait(lambda: watcher.status.get("dev-1") == "online")
        url, sha, size = server.publish("v2.efb", bundles["v2"])
        dep = send_deploy(broker.url, "test", "dev-1", url, sha, size)
        ev = watcher.wait_event(dep, TERMINAL)
        assert (ev.state, ev.reason) == (S.FAILED, "no-space")
        assert watcher.states(dep) == ["QUEUED", "DOWNLOADING", "FAILED"]
        assert not list(home.downloads.iterdir())  # the .part file is gone
        assert thread.is_alive() and agent.updater.state.pending is None
        assert hooks.filler is not None
        hooks.filler.unlink()
        again = send_deploy(broker.url, "test", "dev-1", url, sha, size)
        assert watcher.wait_event(again, TERMINAL).state == S.SUCCEEDED
    finally:
        agent.stop()
        thread.join(timeout=30)
        watcher.close()


def test_the_spool_drops_and_counts_what_a_full_disk_refuses(fs: Path) -> None:
    spool = Spool(fs / "spool", max_points=100)
    assert spool.append(b'{"ts": 1, "seq": 1}')
    filler = fill(fs, leave=0)
    assert not spool.append(b'{"ts": 2, "seq": 2}')  # refused, not raised
    assert (len(spool), spool.dropped) == (1, 1)
    assert not list((fs / "spool").glob(".*.tmp"))  # no half-written point left behind
    filler.unlink()
    assert spool.append(b'{"ts": 3, "seq": 3}')
    assert (len(spool), spool.dropped) == (2, 1)


def test_the_spool_is_bounded_by_bytes_oldest_dropped_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_points=100, max_bytes=50)
    for i in range(10):
        spool.append(f"{i:09d}\n".encode())  # 10 bytes each
    assert (len(spool), spool.size_bytes, spool.dropped) == (5, 50, 5)
    sent: list[bytes] = []
    spool.replay(sent.append)
    assert sent == [f"{i:09d}\n".encode() for i in range(5, 10)]
    assert not spool.append(b"x" * 51) and spool.dropped == 6  # one point over the whole budget
    assert len(Spool(tmp_path / "spool", 100, 50)) == 0
