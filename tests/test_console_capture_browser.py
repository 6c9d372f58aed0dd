"""The "Captured data" page in a real headless Chromium (Debian's, driven by Playwright for Python) against a real
``fleetctl serve`` with scripted devices on a real broker: an admin signs in, enables a capture policy from the
form and sees it listed with the devices it reached, sees the captured samples (indexed through the fleet's own
store) and labels one; a viewer sees the same data and no capture button. Every wait is on page state
(Playwright's ``expect``), never a sleep. The screenshot goes to build/screenshots/captures.png."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from device_agent import protocol as P
from device_agent.bundle import PrivateKey
from fleet.broker import start_local_broker
from fleet.client import ApiClient
from fleet.store import Store
from tests.support.console import SHOTS, WAIT_MS, ServeProcess, chromium, expect
from tests.support.fleet_harness import TOKEN, wait_until
from tests.support.scripted_device import ScriptedDevice, start_fleet

OLD = P.ModelRef("digits", "1.0.0", 1, "1" * 64)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, release_key: PrivateKey) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("console-capture")
    _, pub = release_key.save(tmp / "keys" / "release")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with start_local_broker(workdir=tmp / "broker") as broker:
        serve = ServeProcess(broker.url, tmp, pub, TOKEN).start()
        api = ApiClient(serve.url, TOKEN)
        devices: list[ScriptedDevice] = []
        try:
            devices = start_fleet(broker.url, "default", {"a": 2, "b": 2}, OLD)
            wait_until(lambda: len(api.get("/devices")) == 4, 60, "4 devices registered")
            yield {"url": serve.url, "api": api, "db": f"sqlite:///{tmp / 'fleet.db'}"}
        finally:
            for d in devices:
                d.stop()
            serve.stop()


def signed_in(browser: Any, url: str, token: str) -> tuple[Any, Any, list[str]]:
    """A fresh context (its own cookies) and page, signed in with the keyboard; the browser's own errors."""
    context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    errors: list[str] = []  # CSP violations, script errors, failed loads
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto("/ui/capture")
    expect(tab).to_have_url(re.compile(r"/ui/login\?next=%2Fui%2Fcapture$"))
    expect(tab.locator("#token")).to_be_focused()
    tab.keyboard.type(token)
    tab.keyboard.press("Enter")
    expect(tab.locator("h1")).to_contain_text("Captured data")
    return context, tab, errors


def sample_row(device: str, i: int, reason: str, score: float, now: float) -> dict[str, Any]:
    """The index row an upload of sample ``s{i}`` writes."""
    return {
        "fleet": "default", "device": device, "id": f"s{i}", "sku": "b", "policy": "p1", "model_name": "digits",
        "model_version": "1.0.0", "model_sha256": "1" * 64, "ts": now - 60 * i, "reason": reason, "score": score,
        "top1": 3, "conf": score, "label": None, "path": f"/nowhere/{device}/s{i}", "size": 3136,
        "sha256": "2" * 64, "received_at": now,
    }  # fmt: skip


def index_samples(db: str, now: float) -> None:
    """Three samples of b-0 and b-1 (newest first: s0, s1, s2), written through the fleet's own store."""
    samples = (("b-0", "low-confidence", 0.41), ("b-1", "drift", 0.73), ("b-0", "low-confidence", 0.55))
    store = Store(db)
    try:
        store.captures.add([sample_row(d, i, r, s, now) for i, (d, r, s) in enumerate(samples)], "b-0", "device/b-0")
    finally:
        store.close()


def test_enable_a_policy_see_samples_label_one_and_a_viewer_sees_no_buttons(
    browser: Any, fleet: dict[str, Any]
) -> None:
    context, tab, errors = signed_in(browser, fleet["url"], TOKEN)
    expect(tab.locator("#policies")).to_contain_text("No capture policy yet.")
    tab.fill("#cap-selector", "sku=b")
    tab.fill("#cap-rules", "low-confidence:0.6, drift")
    tab.fill("input[name=until]", "7d")
    tab.click("#btn-enable")
    policy = tab.locator("#policies tbody tr").first
    expect(policy).to_contain_text("sku=b")
    expect(policy).to_contain_text("low-confidence:0.6, drift:0.5")
    expect(policy).to_contain_text("enabled")
    held = tab.locator("#held tbody")
    for device in ("b-0", "b-1"):
        expect(held.locator("tr", has_text=device)).to_contain_text("yes")  # cmd/capture published to it
    expect(held).not_to_contain_text("a-0")

    index_samples(fleet["db"], time.time())
    tab.reload()
    samples = tab.locator("#samples tbody tr")
    expect(samples).to_have_count(3)
    expect(samples.first).to_contain_text("b-0")
    expect(samples.nth(1)).to_contain_text("drift")
    tab.get_by_label("Label of sample s0").fill("7")
    tab.locator("#samples tbody tr").first.get_by_role("button", name="Label").click()
    expect(tab.get_by_label("Label of sample s0")).to_have_value("7")
    tab.select_option("select[name=reason]", "drift")
    tab.get_by_role("button", name="Filter").click()
    expect(samples).to_have_count(1)
    tab.goto("/ui/capture")
    tab.screenshot(path=str(SHOTS / "captures.png"), full_page=True)
    tab.set_viewport_size({"width": 390, "height": 844})  # a phone: wide tables scroll inside, the page does not
    assert tab.evaluate("document.documentElement.scrollWidth") <= 390
    tab.screenshot(path=str(SHOTS / "captures-phone.png"), full_page=True)
    assert {s["id"]: s["label"] for s in fleet["api"].get("/capture/samples", device="b-0")} == {"s0": "7", "s2": None}
    context.close()
    assert errors == []

    secret = fleet["api"].post("/tokens", {"name": "vera", "role": "viewer"})["secret"]
    context, viewer, errors = signed_in(browser, fleet["url"], secret)
    expect(viewer.locator("#policies")).to_contain_text("sku=b")
    expect(viewer.locator("#samples tbody tr")).to_have_count(3)
    expect(viewer.locator("#samples")).to_contain_text("7")
    expect(viewer.locator("main button")).to_have_count(1)  # Filter; no Enable, Disable, Label, Export, Purge
    expect(viewer.locator("main form[method=post]")).to_have_count(0)
    viewer.screenshot(path=str(SHOTS / "captures-viewer.png"), full_page=True)
    context.close()
    assert errors == []
