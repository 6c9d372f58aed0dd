"""Start a local MQTT broker for first runs, demos and tests: ``mosquitto`` when it is on PATH,
else the embedded amqtt broker (and the caller is told which, so output can say so).
"""

from __future__ import annotations

import getpass
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleet.errors import BrokerError

STARTUP_TIMEOUT = 15.0  # seconds for a broker to accept connections


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port free to listen on now. Chosen below the kernel's ephemeral range when there is room: a port
    the kernel hands out (bind to 0) is also what outgoing connections get, and one of them can take it
    between this call and the server's bind ("address already in use")."""
    low = _ephemeral_low()
    for _ in range(50 if low > 11000 else 0):
        port = random.randint(10000, low - 1)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class LocalBroker:
    """A broker process on loopback that this process started and must stop."""

    kind: str  # "mosquitto" or "embedded"
    host: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    config_path: Path | None = None
    _owned_dir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._owned_dir is not None:
            self._owned_dir.cleanup()
            self._owned_dir = None

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listening(broker: LocalBroker) -> LocalBroker:
    """Wait until the broker accepts connections; otherwise stop it and raise with its log."""
    try:
        wait_for_port(broker.host, broker.port, STARTUP_TIMEOUT, broker.process)
    except BrokerError as exc:
        text = broker.log()
        broker.stop()
        raise BrokerError(f"{exc}; {broker.kind} broker log: {text[-500:]}") from None
    return broker


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )


def _workdir(workdir: Path | None) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        return workdir, None
    owned = tempfile.TemporaryDirectory(prefix="edgefleet-broker-")
    return Path(owned.name), owned


def start_mosquitto(
    *,
    port: int | None = None,
    extra_config: str = "",
    workdir: Path | None = None,
    anonymous: bool = True,
    own_session: bool = False,
) -> LocalBroker:
    """Start ``mosquitto`` on 127.0.0.1 with its own config (``extra_config`` is appended).

    ``own_session``: in a process group of its own, so a terminal's Ctrl-C reaches only the caller,
    which then stops the broker after the processes that use it.

    Raises:
        BrokerError: no mosquitto binary, or it did not start listening.
    """
    binary = mosquitto_binary()
    if binary is None:
        raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
    port = port or free_port()
    wd, owned = _workdir(workdir)
    log_path = wd / "mosquitto.log"
    config = wd / "mosquitto.conf"
    lines = [
        # as root, mosquitto would switch to the "mosquitto" user and lose access to workdir
        f"user {getpass.getuser()}",
        "per_listener_settings false",
        f"listener {port} 127.0.0.1",
        f"allow_anonymous {'true' if anonymous else 'false'}",
        "persistence false",
        f"log_dest file {log_path}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "max_queued_messages 100000",
        extra_config,
    ]
    config.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [binary, "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=own_session,
    )
    return _listening(LocalBroker("mosquitto", "127.0.0.1", port, proc, wd, log_path, config, owned))


def start_embedded(*, port: int | None = None, workdir: Path | None = None, own_session: bool = False) -> LocalBroker:
    """Start the embedded amqtt broker in a child process on 127.0.0.1 (``own_session`` as for
    ``start_mosquitto``). Raises: BrokerError."""
    port = port or free_port()
    wd, owned = _workdir(workdir)
    log_path = wd / "embedded-broker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleet.embedded_broker", "--port", str(port)],
            stdout=log,
            stderr=log,
            start_new_session=own_session,
        )
    return _listening(LocalBroker("embedded", "127.0.0.1", port, proc, wd, log_path, None, owned))


def start_local_broker(prefer: str = "auto", *, workdir: Path | None = None, own_session: bool = False) -> LocalBroker:
    """``auto``: mosquitto if installed, else embedded; or force ``mosquitto`` / ``embedded``."""
    if prefer == "embedded" or (prefer == "auto" and mosquitto_binary() is None):
        return start_embedded(workdir=workdir, own_session=own_session)
    return start_mosquitto(workdir=workdir, own_session=own_session)
