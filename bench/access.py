"""Fleet manager under unauthenticated load: peak RSS of ``fleetctl serve`` while 10 clients each POST
500 MiB without a token (issue 14: it rose from 100 MB to 924 MB for one 400 MiB body before).

``fleetctl serve`` runs as its own process on loopback with a local Mosquitto; each client declares a
500 MiB JSON body and keeps sending 1 MiB chunks until the server has answered and closed (or 500 MiB
are sent, or 120 s pass). The peak is the kernel's high-water mark (``VmHWM``) after resetting it
(``/proc/PID/clear_refs``) once the server idles, so nothing between two samples is missed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from device_agent.bundle import PrivateKey
from fleet.broker import free_port, start_local_broker, wait_for_port

CLIENTS = 10
BODY = 500 << 20  # bytes each client declares and tries to send
CHUNK = 1 << 20
DEADLINE_S = 120.0  # per client: a bound, not a measurement
TOKEN = "bench-" + "0123456789abcdef"


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def _flood(port: int, path: str, results: list[tuple[int, str]], token: str | None = None) -> None:
    """Declare a 500 MiB body and send until the server closes; record (bytes sent, status line)."""
    sent, status = 0, ""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {BODY}\r\n\r\n"
    chunk = b"[" + b"1," * (CHUNK // 2 - 1) + b"1"
    deadline = time.monotonic() + DEADLINE_S
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(head.encode())
            while sent < BODY and time.monotonic() < deadline:
                s.sendall(chunk[: min(CHUNK, BODY - sent)])
                sent += min(CHUNK, BODY - sent)
        except OSError:
            pass  # the server answered and closed: what we want
        try:
            status = s.recv(200).split(b"\r\n", 1)[0].decode(errors="replace")
        except OSError as exc:
            status = f"({exc.__class__.__name__})"
    results.append((sent, status))


def _serve(tmp: Path, broker_url: str, port: int) -> subprocess.Popen[bytes]:
    key = PrivateKey.generate()
    _, pub = key.save(tmp / "keys" / "release")
    args = [str(Path(sys.executable).parent / "fleetctl"), "serve", "--db", f"sqlite:///{tmp / 'fleet.db'}"]
    args += ["--broker", broker_url, "--artifacts", str(tmp / "artifacts"), "--listen", f"127.0.0.1:{port}"]
    args += ["--trust", str(pub)]
    env = {**os.environ, "FLEETCTL_TOKEN": f"bench={TOKEN}"}
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _round(port: int, pid: int, path: str, token: str | None) -> tuple[int, int, list[tuple[int, str]]]:
    """(idle KiB, peak KiB, per-client results) for CLIENTS floods of ``path``."""
    for _ in range(20):  # warm up the routes, the store and the token check
        httpx.get(f"http://127.0.0.1:{port}/api/v1/devices", headers={"Authorization": f"Bearer {TOKEN}"})
    time.sleep(1.0)
    idle = _status_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    results: list[tuple[int, str]] = []
    threads = [threading.Thread(target=_flood, args=(port, path, results, token)) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return idle, _status_kib(pid, "VmHWM"), results


def run() -> str:
    rows = []
    with tempfile.TemporaryDirectory() as d, start_local_broker() as broker:
        port = free_port()
        proc = _serve(Path(d), broker.url, port)
        try:
            wait_for_port("127.0.0.1", port, 60, proc)
            cases = [
                ("no token, POST /api/v1/rollouts", "/api/v1/rollouts", None),
                ("no token, POST /api/v1/releases", "/api/v1/releases", None),
                ("admin token, POST /api/v1/rollouts (JSON cap 64 KiB)", "/api/v1/rollouts", TOKEN),
            ]
            for label, path, token in cases:
                idle, peak, results = _round(port, proc.pid, path, token)
                statuses = sorted({status.split(" ", 2)[1] if " " in status else status for _, status in results})
                most = max(sent for sent, _ in results) / 2**20
                mb = (idle / 1024, peak / 1024, (peak - idle) / 1024)
                rows.append(
                    f"| {label} | {mb[0]:.0f} | {mb[1]:.0f} | {mb[2]:.1f} | {', '.join(statuses)} | {most:.0f} |"
                )
        finally:
            proc.terminate()
            proc.wait(15)
    head = [
        "## Fleet manager: unauthenticated load",
        "",
        f"{CLIENTS} clients at once, each declaring a {BODY >> 20} MiB JSON body and sending 1 MiB chunks until the",
        "server closes; RSS of the `fleetctl serve` process (VmRSS idle, VmHWM peak after a reset). The server",
        "answers from the headers (401, or 413 for a body over the route's cap) and never reads the body.",
        "",
        "| case | idle RSS MB | peak RSS MB | peak − idle MB | answers | most MiB a client got to send |",
        "|---|---:|---:|---:|---|---:|",
    ]
    return "\n".join([*head, *rows]) + "\n"
