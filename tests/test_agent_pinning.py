"""What a device accepts: only its provisioned model names (``wrong-model``), never below a rollback floor
that survives a damaged state.json, and artifacts only from its fleet's URLs. Real broker, HTTP, LiteRT."""

from __future__ import annotations

import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from device_agent import protocol as P
from device_agent.bundle import PrivateKey
from device_agent.config import DownloadSection, load_config
from device_agent.floor import MAX_LINES, RollbackFloor
from device_agent.home import Home
from device_agent.urlpolicy import redact_url, url_allowed
from fleet.broker import LocalBroker
from tests.support.agent_harness import (
    TERMINAL,
    AgentThread,
    ArtifactServer,
    Watcher,
    flash_device,
    package_tiny,
    send_deploy,
)
from toolchain.packaging import PackageOptions, package

S = P.DeploymentState


@pytest.fixture(scope="module")
def bundles(tiny_models: dict[str, Path], release_key: PrivateKey) -> dict[str, bytes]:
    other = PackageOptions(
        name="other",
        version="1.0.0",
        sequence=5,
        keys=[release_key],
        labels=tiny_models["labels"],
        calibration=tiny_models["calibration"],
    )
    return {
        "v1": package_tiny(tiny_models, release_key, "1.0.0", 1),
        "v1.1": package_tiny(tiny_models, release_key, "1.1.0", 1),  # validly signed, sequence 1
        "v2": package_tiny(tiny_models, release_key, "2.0.0", 2),
        "other": package(tiny_models["tflite"], other),
    }


def deploy(
    broker: LocalBroker, server: ArtifactServer, data: bytes, watcher: Watcher, host: str = ""
) -> P.DeploymentEvent:
    url, sha, size = server.publish(f"b{len(watcher.events)}.efb", data)
    if host:
        url = url.replace("127.0.0.1", host)
    dep = send_deploy(broker.url, "test", "dev-1", url, sha, size)
    return watcher.wait_event(dep, TERMINAL)


def run_device(home: Home) -> tuple[AgentThread, Watcher]:
    agent = AgentThread(home)
    agent.wait_connected()
    return agent, Watcher(agent.agent.config.broker.url)


def test_flash_pins_the_bundle_name_and_the_fleet_urls(tmp_path, bundles, key_files) -> None:
    home = flash_device(tmp_path, bundles["v1"], "mqtt://127.0.0.1:1883", key_files[1])
    config = load_config(home.config)
    assert config.device.models == ("digits",)
    assert config.download.allowed_urls == ("http://127.0.0.1/", "https://127.0.0.1/")
    assert RollbackFloor(home.floor_file).read() == {"digits": 1}
    named = flash_device(
        tmp_path / "2", bundles["v1"], "mqtt://b:1", key_files[1], model_names=("a", "b"), fleet_urls=("https://f/x/",)
    )
    assert load_config(named.config).device.models == ("a", "b")
    assert load_config(named.config).download.allowed_urls == ("https://f/x/",)


def test_a_bundle_of_another_model_is_rejected_wrong_model(tmp_path, broker, server, bundles, key_files) -> None:
    home = flash_device(tmp_path, bundles["v1"], broker.url, key_files[1])
    agent, watcher = run_device(home)
    try:
        ev = deploy(broker, server, bundles["other"], watcher)
        assert (ev.state, ev.reason) == (S.REJECTED, "wrong-model")
        assert "'other'" in ev.detail and "digits" in ev.detail
        state = home.load_state()
        assert (state.active, state.committed) == ("a", {"digits": 1})
        assert agent.agent.info().model.version == "1.0.0"  # type: ignore[union-attr]
    finally:
        agent.stop()
        watcher.close()


def test_a_device_provisioned_for_two_models_accepts_both(tmp_path, broker, server, bundles, key_files) -> None:
    home = flash_device(tmp_path, bundles["v1"], broker.url, key_files[1], model_names=("digits", "other"))
    agent, watcher = run_device(home)
    try:
        assert deploy(broker, server, bundles["other"], watcher).state == S.SUCCEEDED
        assert home.load_state().committed == {"digits": 1, "other": 5}
    finally:
        agent.stop()
        watcher.close()


DAMAGE = {
    "floor-emptied": (b'{"active": "b", "previous": "a"}', False),  # valid JSON, committed forgotten
    "garbage": (b"\x00garbage", False),  # unreadable: recovery from the slots
    "garbage-and-no-floor-file": (b"", True),  # only the active slot's manifest is left
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_state_json_does_not_lower_the_rollback_floor(
    damage, tmp_path, broker, server, bundles, key_files
) -> None:
    home = flash_device(tmp_path, bundles["v1"], broker.url, key_files[1])
    agent, watcher = run_device(home)
    try:
        assert deploy(broker, server, bundles["v2"], watcher).state == S.SUCCEEDED
    finally:
        agent.stop()
    assert RollbackFloor(home.floor_file).read() == {"digits": 2}  # written before the commit
    state_bytes, drop_floor_file = DAMAGE[damage]
    home.state_file.write_bytes(state_bytes)
    if drop_floor_file:
        home.floor_file.unlink()
    agent = AgentThread(home)
    try:
        agent.wait_connected()
        assert agent.agent.updater.state.committed == {"digits": 2}
        ev = deploy(broker, server, bundles["v1.1"], watcher)
        assert (ev.state, ev.reason) == (S.REJECTED, "downgrade")
        assert agent.agent.info().model.version == "2.0.0"  # type: ignore[union-attr]
        assert RollbackFloor(home.floor_file).read() == {"digits": 2}  # the copies are whole again
    finally:
        agent.stop()
        watcher.close()


def test_the_floor_file_skips_torn_lines_and_compacts(tmp_path: Path) -> None:
    floor = RollbackFloor(tmp_path / "floor.log")
    floor.raise_to({"digits": 3, "other": 1})
    floor.raise_to({"digits": 2})  # lower: nothing appended
    with floor.path.open("ab") as fh:
        fh.write(b"other 1x\n\xff\xfe\ndigits 9")  # damage, then an append torn before its newline
    assert floor.read() == {"digits": 3, "other": 1}
    floor.raise_to({"other": 4})  # the torn line is cut, not extended into "digits 9other 4"
    assert floor.read() == {"digits": 3, "other": 4}
    for seq in range(10, 10 + MAX_LINES):
        floor.raise_to({"digits": seq})
    assert floor.read() == {"digits": 9 + MAX_LINES, "other": 4}
    assert floor.path.read_bytes().count(b"\n") < MAX_LINES


def test_an_artifact_url_off_the_fleet_is_rejected_before_any_download(
    tmp_path, broker, server, bundles, key_files
) -> None:
    home = flash_device(tmp_path, bundles["v1"], broker.url, key_files[1])
    agent, watcher = run_device(home)
    try:
        ev = deploy(broker, server, bundles["v2"], watcher, host="localhost")  # not the broker's host
        assert (ev.state, ev.reason) == (S.REJECTED, "url-not-allowed")
        assert watcher.states(ev.deployment_id) == ["REJECTED"]
        assert server.requests == []
    finally:
        agent.stop()
        watcher.close()


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://fleet.example:8080/artifacts/a.efb?sig=1", True),
        ("https://fleet.example/artifacts/a.efb", True),
        ("http://fleet.example.evil.net/artifacts/a.efb", False),
        ("http://user@fleet.example/artifacts/a.efb", False),
        ("http://fleet.example/other/a.efb", False),
        ("ftp://fleet.example/artifacts/a.efb", False),
        ("http://fleet.example:99999/artifacts/a.efb", False),
    ],
)
def test_allowed_urls_compare_scheme_host_port_and_path(url: str, ok: bool) -> None:
    allowed = ("http://fleet.example/artifacts/", "https://fleet.example:443/artifacts")
    assert url_allowed(url, allowed) is ok


def test_redacted_urls_drop_credentials_and_query() -> None:
    assert redact_url("https://u:p@h:8443/a/b.efb?sig=SECRET#x") == "https://h:8443/a/b.efb"


class HostileHandler(BaseHTTPRequestHandler):
    """Answers every request with an error whose reason phrase and body are text the device must not echo."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(500, "LEAKED-REASON")
        self.send_header("Content-Length", "12")
        self.end_headers()
        self.wfile.write(b"LEAKED-BODY!")


def test_download_errors_never_echo_what_the_server_sent(tmp_path, broker, bundles, key_files) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), HostileHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    sections = {"download": replace(DownloadSection(), retries=1, backoff_s=0.01, allowed_urls=("http://127.0.0.1/",))}
    home = flash_device(tmp_path, bundles["v1"], broker.url, key_files[1], sections=sections)
    agent, watcher = run_device(home)
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/a.efb?sig=SECRET"
        dep = send_deploy(broker.url, "test", "dev-1", url, "0" * 64, 1000)
        ev = watcher.wait_event(dep, TERMINAL)
        assert (ev.state, ev.reason) == (S.FAILED, "download")
        assert "HTTP 500" in ev.detail
        assert "LEAKED" not in ev.detail and "SECRET" not in ev.detail
    finally:
        agent.stop()
        watcher.close()
        httpd.shutdown()
        httpd.server_close()
