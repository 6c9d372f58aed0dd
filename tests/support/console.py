"""Helpers for the console's tests: a signed-in HTTP client (httpx, cookies kept) and form tokens read from pages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet.broker import free_port
from tests.support.fleet_harness import wait_until

try:
    from playwright import sync_api
except ImportError:  # edgefleet[dev] has it; the browser fixtures skip (fail under CI) without it
    sync_api = None  # type: ignore[assignment]

SHOTS = Path(__file__).resolve().parent.parent.parent / "build" / "screenshots"
CHROMIUM = os.environ.get("EDGEFLEET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"]  # root, offline, small /dev/shm
WAIT_MS = 90_000  # a hang guard for page state under load, not a speed assertion
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
NONCE_RE = re.compile(r'name="nonce" value="([^"]+)"')


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's chromium driven by Playwright with the flags this machine needs (never `playwright install`);
    without either, the test skips, and fails under CI (.ci/run installs both)."""
    if sync_api is None or not Path(CHROMIUM).exists():
        why = (
            "playwright is not installed (pip install -e '.[dev]')"
            if sync_api is None
            else f"no chromium at {CHROMIUM}"
        )
        if os.environ.get("EDGEFLEET_CI") == "1":
            pytest.fail(f"{why} (.ci/run installs both)")
        pytest.skip(why)
    sync_api.expect.set_options(timeout=WAIT_MS)  # expect's own default is 5 s, too short under load
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


def expect(target: Any) -> Any:
    return sync_api.expect(target)


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def sign_in(url: str, token: str) -> tuple[httpx.Client, httpx.Response]:
    """A client signed in to the console at ``url`` with ``token``, and the sign-in's answer."""
    client = httpx.Client(base_url=url, timeout=30)
    form = client.get("/ui/login")
    match = NONCE_RE.search(form.text)
    assert match, form.text[:300]
    answer = client.post("/ui/login", data={"token": token, "nonce": match.group(1), "next": "/ui"})
    return client, answer


class ServeProcess:
    """``fleetctl serve`` as a child process on a free port, its bootstrap token in a 0600 file (not on the
    command line), its output in ``log``; it inherits the environment (PYTHONPATH included)."""

    def __init__(self, broker_url: str, tmp: Path, pub: Path, token: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        token_file = tmp / "bootstrap.token"
        token_file.write_text(f"alice={token}\n")
        token_file.chmod(0o600)
        self.args = [
            str(Path(sys.executable).parent / "fleetctl"),
            "serve",
            *("--db", f"sqlite:///{tmp / 'fleet.db'}", "--broker", broker_url, "--artifacts", str(tmp / "artifacts")),
            *("--listen", f"127.0.0.1:{self.port}", "--trust", str(pub), "--token-file", str(token_file)),
        ]
        self.log = tmp / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log)
        wait_until(self._up, 60, f"fleetctl serve to answer (log: {self.log})")
        return self

    def _up(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
