"""The local API against hostile or careless local callers, on real `edge-agent run` processes.

Each case also reads the agent's peak RSS (``VmHWM`` in /proc) and asserts it stays within
``RSS_BOUND`` of the steady value measured before any hostile request: a refusal must come before
the work, not after it.
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import time
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from device_agent.api import UNIX_PREFIX, AgentClient
from device_agent.bundle import PrivateKey
from device_agent.cli import cli
from device_agent.config import ApiSection
from device_agent.errors import LocalApiError
from device_agent.home import Home
from fleet.broker import free_port
from tests.support.agent_harness import flash_device, package_tiny
from tests.support.processes import background

RSS_BOUND = 32 << 20  # bytes of peak RSS a hostile request may add to the agent's steady peak
X = np.zeros((1, 8, 8, 1), np.float32)


@dataclass
class Device:
    home: Home
    pid: int
    url: str

    def client(self, token: str | None = None) -> AgentClient:
        if token is None:
            token = self.home.api_token.read_text().strip() if self.url.startswith("http") else ""
        return AgentClient(self.url, timeout=30, token=token)

    def proc(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def peak_rss(self) -> int:
        return self.proc("VmHWM") * 1024


def start(stack: ExitStack, root: Path, bundle: bytes, pub: Path, api: ApiSection) -> Device:
    broker = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: the API works offline
    home = flash_device(root, bundle, broker, pub, replay_rate=0.0, sections={"api": api})
    proc = stack.enter_context(background(["edge-agent", "run", "--home", str(home.root)], root / "agent.log"))
    for _ in range(600):
        info = home.read_run_info()
        if info and info.get("api"):
            device = Device(home, proc.pid, str(info["api"]))
            device.client().predict(X)  # warm: the steady peak includes one real inference
            return device
        if proc.poll() is not None:
            raise RuntimeError((root / "agent.log").read_text())
        time.sleep(0.1)
    raise TimeoutError("the agent did not start its API")


@pytest.fixture(scope="module")
def devices(tmp_path_factory, tiny_models, release_key: PrivateKey) -> Iterator[dict[str, Device]]:
    root = tmp_path_factory.mktemp("api")
    _, pub = release_key.save(root / "keys" / "release")
    bundle = package_tiny(tiny_models, release_key, "1.0.0", 1)
    with ExitStack() as stack:
        sock = start(stack, root / "sock", bundle, pub, ApiSection())
        tcp = start(
            stack, root / "tcp", bundle, pub, ApiSection(listen="127.0.0.1:0", read_timeout_s=3.0, max_connections=8)
        )
        yield {"sock": sock, "tcp": tcp, "steady": {"sock": sock.peak_rss(), "tcp": tcp.peak_rss()}}  # type: ignore[dict-item]


def within_bound(devices: dict[str, Device], name: str) -> None:
    steady: dict[str, int] = devices["steady"]  # type: ignore[assignment]
    grown = devices[name].peak_rss() - steady[name]
    assert grown <= RSS_BOUND, f"peak RSS grew by {grown >> 20} MiB"


def connect(url: str) -> socket.socket:
    if url.startswith(UNIX_PREFIX):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(url[len(UNIX_PREFIX) :])
        return s
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def exchange(url: str, head: str, body: bytes = b"") -> tuple[int, dict]:
    """Send a hand-written request; the answer's status and JSON body (the server closes after a refusal)."""
    with connect(url) as s:
        s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536) or b"\r\n\r\n"
        header, _, rest = data.partition(b"\r\n\r\n")
        length = next(int(h.split(b":")[1]) for h in header.split(b"\r\n") if h.lower().startswith(b"content-length"))
        while len(rest) < length:
            rest += s.recv(65536)
        return int(header.split()[1]), json.loads(rest[:length])


def test_the_default_is_a_unix_socket_in_the_home_with_mode_0660(devices, tmp_path) -> None:
    d = devices["sock"]
    assert d.url == f"{UNIX_PREFIX}{d.home.api_socket}"
    st = os.stat(d.home.api_socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()
    assert not d.home.api_token.exists()  # no TCP, no token
    np.savez(tmp_path / "in.npz", image=X)
    out = CliRunner().invoke(cli, ["predict", "--home", str(d.home.root), str(tmp_path / "in.npz"), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["via"] == "agent"


def test_tcp_needs_the_token_from_the_home(devices, tmp_path) -> None:
    d = devices["tcp"]
    assert stat.S_IMODE(os.stat(d.home.api_token).st_mode) == 0o600
    for token in ("", "x" * 43):
        with pytest.raises(LocalApiError) as err:
            d.client(token).request("POST", "/v1/rollback", b"")
        assert err.value.status == 401
    assert d.client().status()["model"]["version"] == "1.0.0"
    np.savez(tmp_path / "in.npz", image=X)
    out = CliRunner().invoke(cli, ["predict", "--home", str(d.home.root), str(tmp_path / "in.npz"), "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["via"] == "agent", out.output
    within_bound(devices, "tcp")


def test_tcp_refuses_a_foreign_host_or_origin(devices) -> None:
    d = devices["tcp"]
    token = d.home.api_token.read_text().strip()
    hostport = d.url.removeprefix("http://")
    auth = f"Authorization: Bearer {token}\nContent-Length: 0"
    status, doc = exchange(d.url, f"POST /v1/rollback HTTP/1.1\nHost: evil.example\n{auth}\n")
    assert (status, doc["code"]) == (403, "bad-host")
    status, doc = exchange(
        d.url, f"POST /v1/rollback HTTP/1.1\nHost: {hostport}\nOrigin: http://evil.example\n{auth}\n"
    )
    assert (status, doc["code"]) == (403, "bad-origin")
    status, doc = exchange(d.url, f"GET /v1/status HTTP/1.1\nHost: {hostport}\nOrigin: http://{hostport}\n{auth}\n")
    assert status == 200 and doc["model"]["name"] == "digits"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ("", 411),  # absent
        ("Content-Length: -1\n", 411),
        ("Content-Length: 1e9\n", 411),
        ("Transfer-Encoding: chunked\n", 411),
        (f"Content-Length: {300 << 20}\n", 413),  # refused before reading: no body is ever sent
    ],
)
def test_content_length_is_required_and_capped_before_reading(devices, headers: str, status: int) -> None:
    d = devices["sock"]
    got, doc = exchange(d.url, f"POST /v1/predict HTTP/1.1\nHost: x\nContent-Type: application/x-npz\n{headers}")
    assert (got, doc["code"]) == (status, "length-required" if status == 411 else "too-large")
    within_bound(devices, "sock")


def npy_claiming(shape: tuple[int, ...]) -> bytes:
    """A .npy whose header claims ``shape`` (float32) but which carries 64 bytes of data."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + b"\0" * 64


def zip_bomb(member_bytes: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("image.npy", "w", force_zip64=True) as fh:
        fh.write(npy_claiming((member_bytes // 4,))[:-64])
        block = b"\0" * (1 << 20)
        for _ in range(member_bytes >> 20):
            fh.write(block)
    return buf.getvalue()


def test_array_sizes_are_checked_from_the_headers_before_allocating(devices) -> None:
    d = devices["sock"]
    client = d.client()
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w") as zf:
        zf.writestr("image.npy", npy_claiming((20000, 20000, 1)))  # 1.6 GB claimed, 64 bytes sent
    bomb = zip_bomb(200 << 20)  # 200 MiB of zeros in well under 1 MiB
    assert len(bomb) < (1 << 20)
    for body, ctype in (
        (npy_claiming((20000, 20000)), "application/x-npy"),
        (npz.getvalue(), "application/x-npz"),
        (bomb, "application/x-npz"),
    ):
        with pytest.raises(LocalApiError) as err:
            client.request("POST", "/v1/predict", body, ctype)
        assert err.value.status == 413 and "over" in str(err.value)
    assert client.predict(X)["model"]["version"] == "1.0.0"
    within_bound(devices, "sock")


def test_half_sent_requests_hold_no_more_than_the_connection_cap(devices) -> None:
    d = devices["tcp"]
    threads_before = d.proc("Threads")
    hostport = d.url.removeprefix("http://")
    socks = []
    try:
        for _ in range(300):
            s = connect(d.url)
            s.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: {hostport}\r\nContent-Le".encode())
            socks.append(s)
        assert d.proc("Threads") <= threads_before + 8  # the cap, not one thread per connection
        busy = socks[8].recv(4096)  # the first connection beyond the cap is answered at once
        assert busy.startswith(b"HTTP/1.1 503") and b'"busy"' in busy
    finally:
        for s in socks:
            s.close()
    for _ in range(300):  # the slots come back (read timeout 3 s, or the callers hung up)
        try:
            assert d.client().predict(X)["model"]["version"] == "1.0.0"
            break
        except LocalApiError as exc:
            assert exc.status == 503
            time.sleep(0.1)
    else:
        raise AssertionError("the API did not serve again after the slow callers left")
    within_bound(devices, "tcp")


def test_a_half_sent_request_is_dropped_after_the_read_timeout(devices) -> None:
    d = devices["tcp"]
    hostport = d.url.removeprefix("http://")
    for partial in (f"POST /v1/predict HTTP/1.1\r\nHost: {hostport}\r\nContent-Le", "GET /v1/sta"):
        with connect(d.url) as s:  # the client's own timeout is 30 s; the agent's read timeout 3 s
            s.sendall(partial.encode())
            assert s.recv(4096) == b""  # the agent hung up on the silent caller
    token = d.home.api_token.read_text().strip()
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/x-npz\r\nContent-Length: 1000\r\n\r\n"
    )
    with connect(d.url) as s:  # an authorized caller whose headers are complete but whose body never comes
        s.sendall(head.encode() + b"PK")
        assert s.recv(4096) == b""
    assert d.client().predict(X)["model"]["version"] == "1.0.0"
