"""The console in a real headless Chromium (Debian's, driven by Playwright for Python) against a real
``fleetctl serve`` with scripted devices on a real broker: sign in, see the fleet, start a rollout from the
UI and watch its stage advance live, abort one, see a tripped gate's evidence and the devices come back; a
viewer sees no buttons and forged POSTs are refused. Every wait is on page state (Playwright's ``expect``),
never a sleep. Screenshots of each page go to build/screenshots/.

The tests share one fleet and run in file order (each starts from where the previous left the devices).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from device_agent import protocol as P
from device_agent.bundle import PrivateKey
from device_agent.protocol import DeploymentState as D
from fleet.broker import start_local_broker
from fleet.client import ApiClient
from tests.support.bundles import simple_bundle
from tests.support.console import SHOTS, WAIT_MS, ServeProcess, chromium, expect
from tests.support.fleet_harness import TOKEN
from tests.support.scripted_device import ScriptedDevice, start_fleet

OLD = P.ModelRef("digits", "1.0.0", 1, "1" * 64)


def broken_on_b(sku: str, release: str) -> tuple[D, str] | None:
    return (D.FAILED, "selftest-failed") if sku == "b" and release == "digits@3.0.0" else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, release_key: PrivateKey) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("console")
    _, pub = release_key.save(tmp / "keys" / "release")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with start_local_broker(workdir=tmp / "broker") as broker:
        serve = ServeProcess(broker.url, tmp, pub, TOKEN).start()
        api = ApiClient(serve.url, TOKEN)
        devices: list[ScriptedDevice] = []
        try:
            devices = start_fleet(broker.url, "default", {"a": 3, "b": 3}, OLD, fault=broken_on_b)
            for version, sequence in (("2.0.0", 2), ("3.0.0", 3), ("4.0.0", 4)):
                path = tmp / f"digits-{version}.efb"
                path.write_bytes(simple_bundle(release_key, version=version, sequence=sequence))
                api.add_release(path)
            yield {"url": serve.url, "api": api, "devices": devices}
        finally:
            for d in devices:
                d.stop()
            serve.stop()


@pytest.fixture
def page(browser: Any, fleet: dict[str, Any]) -> Iterator[Any]:
    """A signed-in admin's page (a fresh browser context: its own cookies)."""
    context = browser.new_context(base_url=fleet["url"], viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    errors: list[str] = []  # the browser's own complaints: CSP violations, script errors, failed loads
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(tab, TOKEN)
    yield tab
    context.close()
    assert errors == []


def sign_in(tab: Any, token: str) -> None:
    """Sign in with the keyboard only: the token field has focus, Enter submits."""
    tab.goto("/ui")
    expect(tab).to_have_url(re.compile(r"/ui/login\?next=%2Fui$"))
    expect(tab.locator("#token")).to_be_focused()
    tab.keyboard.type(token)
    tab.keyboard.press("Enter")
    expect(tab.locator("h1")).to_have_text("Fleet default")


def shot(tab: Any, name: str) -> None:
    tab.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def tab_to(tab: Any, element_id: str, most: int = 40) -> None:
    """Press Tab until the element with ``element_id`` has the focus."""
    for _ in range(most):
        tab.keyboard.press("Tab")
        if tab.evaluate("document.activeElement && document.activeElement.id") == element_id:
            return
    raise AssertionError(f"#{element_id} is not reachable with Tab in {most} steps")


def settled(tab: Any) -> None:
    """Wait until the rollout page stops refreshing: every device it changed has come back (or failed)."""
    expect(tab.locator("#live")).not_to_have_attribute("hx-get", re.compile(".*"))


def start_rollout(
    tab: Any,
    release: str,
    stages: str,
    *,
    selector: str = "",
    approval: bool = False,
    health: dict[str, str] | None = None,
) -> int:
    """Fill and send the start form on the rollouts page; the rollout's id from the page it lands on. Without
    ``health`` settings the model-health gate is off (the failure gate decides)."""
    tab.goto("/ui/rollouts")
    tab.select_option("#release", release)
    tab.fill("#stages", stages)
    tab.fill("#selector", selector)
    if health is None:
        tab.uncheck("input[name=health]")
    else:
        tab.click("#start-rollout summary")
        for name, value in health.items():
            tab.fill(f"input[name={name}]", value)
    if approval:
        tab.check("input[name=approval]")
    tab.click("#start-rollout button[type=submit]")
    expect(tab).to_have_url(re.compile(r"/ui/rollouts/\d+$"))
    return int(tab.url.rsplit("/", 1)[1])


def test_sign_in_see_the_fleet_and_filter_devices(page: Any) -> None:
    expect(page.locator(".tile-online .big")).to_have_text("6")
    expect(page.get_by_role("table", name="Devices by sku")).to_contain_text("b")
    shot(page, "overview")
    page.goto("/ui/devices")
    page.select_option("select[name=sku]", "b")
    page.click("form.filters button[type=submit]")
    expect(page).to_have_url(re.compile(r"sku=b"))
    expect(page.locator("#devices tbody tr")).to_have_count(3)
    expect(page.locator("#devices")).to_contain_text("digits@1.0.0")
    shot(page, "devices")
    page.keyboard.press("Tab")  # the first stop is the skip link; it moves focus to the content
    expect(page.locator("a.skip")).to_be_focused()


def test_start_a_rollout_from_the_ui_and_watch_the_stage_advance_live(page: Any, fleet: dict[str, Any]) -> None:
    rid = start_rollout(page, "digits@2.0.0", "1,100%", approval=True)
    page.evaluate("window.stillTheSamePage = true")  # gone if the page reloaded: the updates below are live
    expect(page.locator("#rollout-state")).to_have_text("WAITING_APPROVAL")
    expect(page.locator("#rollout-stage")).to_have_text("stage 1 of 2")
    expect(page.locator("#btn-approve")).to_be_visible()
    shot(page, "rollout-waiting-approval")
    overview = page.context.new_page()  # a second tab: the overview lists the rollout among the active ones
    overview.goto("/ui")
    expect(overview.locator("#h-active + ul")).to_contain_text(f"#{rid} digits@2.0.0")
    expect(overview.locator("#h-active + ul")).to_contain_text("WAITING_APPROVAL")
    shot(overview, "overview-active-rollout")
    overview.close()
    assert page.evaluate("window.stillTheSamePage") is True
    tab_to(page, "btn-approve")  # by keyboard, while the fragment around the button is swapped every second
    page.keyboard.press("Enter")
    expect(page.locator("#rollout-stage")).to_have_text("stage 2 of 2")
    expect(page.locator("#rollout-state")).to_have_text("SUCCEEDED")
    expect(page.locator("#per-sku")).to_contain_text("3")
    assert fleet["api"].get(f"/rollouts/{rid}")["state"] == "SUCCEEDED"
    assert all(d.model.version == "2.0.0" for d in fleet["devices"])


def test_an_operator_abort_brings_the_device_back(page: Any, fleet: dict[str, Any]) -> None:
    rid = start_rollout(page, "digits@3.0.0", "1,100%", selector="sku=a", approval=True)
    expect(page.locator("#rollout-state")).to_have_text("WAITING_APPROVAL")
    page.click("#btn-abort")
    expect(page.locator("#rollout-state")).to_have_text("ABORTED")
    expect(page.locator("#rollout-reason")).to_have_text("aborted by operator")
    expect(page.locator("#per-sku")).to_contain_text("rollback-command")
    assert fleet["api"].get(f"/rollouts/{rid}")["created_by"] == "alice"
    settled(page)
    page.goto("/ui/devices?version=3.0.0")
    expect(page.locator("#devices tbody")).to_contain_text("No device matches")


def test_a_tripped_gate_shows_its_evidence_and_the_devices_come_back(page: Any, fleet: dict[str, Any]) -> None:
    start_rollout(page, "digits@3.0.0", "50%,100%")
    expect(page.locator("#rollout-state")).to_have_text("ABORTED")
    expect(page.locator("#rollout-reason")).to_contain_text("failure threshold 10% tripped")
    row_b = page.locator("#per-sku tbody tr", has_text="selftest-failed")
    expect(row_b).to_have_class("bad")
    expect(row_b.locator("td").first).to_have_text("b")
    expect(page.locator("#per-sku")).to_contain_text("rollback-command")
    expect(page.locator("#unsuccessful tbody tr", has_text="selftest-failed")).to_have_count(2)  # why, per device
    shot(page, "rollout-tripped")
    settled(page)
    page.goto("/ui/devices?version=2.0.0")
    expect(page.locator("#devices tbody tr")).to_have_count(6)  # the devices the rollout changed came back
    assert {d.model.version for d in fleet["devices"]} == {"2.0.0"}


def test_the_health_gate_evidence_per_sku_while_a_stage_waits(page: Any, fleet: dict[str, Any]) -> None:
    settings = {"bake_s": "3", "health_settle_s": "0", "health_interval_s": "0.5", "health_min_windows": "3"}
    start_rollout(page, "digits@4.0.0", "1,100%", approval=True, health=settings)
    expect(page.locator("#rollout-state")).to_have_text("WAITING_APPROVAL")
    latency = page.locator("#health tbody tr", has_text="p95 latency")
    expect(latency).to_have_count(2)  # one comparison per sku: the updated device against its sku's others
    expect(latency.first.locator("td").nth(2)).to_have_text("pass")
    expect(latency.first.locator("td").nth(3)).to_have_text("10")  # the updated cohort's median p95, ms
    shot(page, "rollout-health-evidence")
    page.click("#btn-abort")
    expect(page.locator("#rollout-state")).to_have_text("ABORTED")
    settled(page)
    page.goto("/ui/devices?version=2.0.0")
    expect(page.locator("#devices tbody tr")).to_have_count(6)


def test_a_viewer_sees_no_buttons_and_forged_posts_are_refused(browser: Any, page: Any, fleet: dict[str, Any]) -> None:
    secret = fleet["api"].post("/tokens", {"name": "vera", "role": "viewer"})["secret"]
    rid = fleet["api"].get("/rollouts")[0]["id"]  # SUCCEEDED: an operator would see "Rollback"
    page.goto(f"/ui/rollouts/{rid}")
    expect(page.locator("#btn-rollback")).to_be_visible()
    context = browser.new_context(base_url=fleet["url"])
    context.set_default_timeout(WAIT_MS)
    viewer = context.new_page()
    sign_in(viewer, secret)
    viewer.goto(f"/ui/rollouts/{rid}")
    expect(viewer.locator("#rollout-state")).to_have_text("SUCCEEDED")
    expect(viewer.locator(".actions button")).to_have_count(0)
    viewer.goto("/ui/rollouts")
    expect(viewer.locator("#start-rollout")).to_have_count(0)
    csrf = viewer.locator("input[name=csrf]").first.get_attribute("value")
    refused = viewer.request.post(f"/ui/rollouts/{rid}/rollback", form={"csrf": csrf})
    assert refused.status == 403 and 'data-code="forbidden"' in refused.text()
    no_csrf = page.request.post(f"/ui/rollouts/{rid}/rollback", form={"csrf": "forged"})
    assert no_csrf.status == 403 and 'data-code="csrf"' in no_csrf.text()
    attacker = context.new_page()  # another site's page posting a form at the console: no cookie goes along
    attacker.set_content(f'<form method="post" action="{fleet["url"]}/ui/rollouts/{rid}/rollback"></form>')
    attacker.eval_on_selector("form", "f => f.submit()")
    expect(attacker.locator("[data-code]")).to_have_text("unauthorized")
    assert fleet["api"].get(f"/rollouts/{rid}")["state"] == "SUCCEEDED"
    context.close()


def test_reading_without_javascript_at_phone_width(browser: Any, fleet: dict[str, Any]) -> None:
    context = browser.new_context(
        base_url=fleet["url"], java_script_enabled=False, viewport={"width": 390, "height": 844}
    )
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    tab.goto("/ui/login")
    tab.fill("#token", TOKEN)
    tab.click("form button[type=submit]")  # the form posts normally
    expect(tab.locator("h1")).to_have_text("Fleet default")
    assert tab.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling of the page
    shot(tab, "overview-phone")
    tab.goto("/ui/devices/a-0")
    expect(tab.locator("#h-history")).to_be_visible()
    expect(tab.locator("table").last).to_contain_text("digits@2.0.0")
    shot(tab, "device-phone")
    tab.goto("/ui/audit")
    expect(tab.locator("#audit")).to_contain_text("rollout.")
    shot(tab, "audit-phone")
    context.close()


def test_device_detail_shows_telemetry_charts_and_history(page: Any, fleet: dict[str, Any]) -> None:
    api = fleet["api"]
    deployments = [d for r in api.get("/rollouts") for d in api.get(f"/rollouts/{r['id']}/deployments")]
    failed = [d for d in deployments if d["reason"] == "selftest-failed"]
    device = failed[0]["device_id"]
    page.goto(f"/ui/devices/{device}")
    expect(page.locator("h1")).to_contain_text(device)
    expect(page.locator("#h-telemetry + dl")).to_contain_text("lat_p95_ms")
    expect(page.locator("figure.chart svg").first).to_have_attribute("aria-label", re.compile(r"p95 latency"))
    expect(page.locator("table").last).to_contain_text("selftest-failed")
    shot(page, "device")
    page.goto("/ui/releases/digits@3.0.0?check=true&selector=sku%3Db")
    expect(page.locator("#check tbody tr")).to_have_count(3)
    shot(page, "release-check")
