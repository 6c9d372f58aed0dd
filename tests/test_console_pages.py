"""The console over real HTTP (a real fleet manager on uvicorn, a real broker, scripted devices): sessions,
CSRF, roles, every page, SQL-side filters and paging, and the pure parts (session cookies, charts).
The browser tests are in tests/test_console.py."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from device_agent import protocol as P
from device_agent.bundle import PrivateKey
from device_agent.protocol import DeploymentState as D
from fleet.broker import LocalBroker
from fleet.ui.charts import chart, charts
from fleet.ui.console import HERE, HTMX, HTMX_SRI
from fleet.ui.queries import ConsoleQueries, DeviceFilter
from fleet.ui.session import SessionCodec
from tests.support.console import csrf_of, sign_in
from tests.support.fleet_harness import TOKEN, Harness, add_release, running_fleet, wait_until
from tests.support.scripted_device import ScriptedDevice, start_fleet

OLD = P.ModelRef("digits", "1.0.0", 1, "1" * 64)


@pytest.fixture
def fleet(broker: LocalBroker, tmp_path: Path, key_files: tuple[Path, Path]) -> Iterator[Harness]:
    with running_fleet(broker.url, tmp_path, key_files[1]) as h:
        yield h


@pytest.fixture
def devices(broker: LocalBroker, fleet: Harness) -> Iterator[list[ScriptedDevice]]:
    started = start_fleet(broker.url, "default", {"a": 2, "b": 2}, OLD)
    wait_until(lambda: len(fleet.api.get("/devices")) == 4, 30, "4 devices registered")
    yield started
    for d in started:
        d.stop()


def token(h: Harness, name: str, role: str) -> str:
    return str(h.api.post("/tokens", {"name": name, "role": role})["secret"])


def test_pages_need_a_session_and_sign_in_sets_a_strict_httponly_cookie(fleet: Harness) -> None:
    anonymous = httpx.Client(base_url=fleet.url)
    assert anonymous.get("/ui/devices?sku=a").status_code == 303
    assert anonymous.get("/ui/devices?sku=a").headers["location"] == "/ui/login?next=%2Fui%2Fdevices%3Fsku%3Da"
    client, wrong = sign_in(fleet.url, "not-a-token-of-this-fleet")
    assert wrong.status_code == 401 and 'data-code="unauthorized"' in wrong.text and "Traceback" not in wrong.text
    client, answer = sign_in(fleet.url, TOKEN)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui"
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
    assert TOKEN not in answer.headers["set-cookie"]  # the cookie holds the token's hash, signed, not the token
    page = client.get("/ui")
    assert page.status_code == 200 and "Fleet <code>default</code>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["server-timing"].startswith("render;dur=")
    entries = fleet.api.get("/audit", actor="alice")
    assert any(e["action"] == "ui.sign-in" for e in entries)


def test_a_forged_cookie_a_stale_sign_in_form_and_sign_out(fleet: Harness) -> None:
    client, _ = sign_in(fleet.url, TOKEN)
    value = client.cookies["edgefleet_session"]
    payload, _, mac = value.rpartition(".")
    forged = httpx.Client(base_url=fleet.url, cookies={"edgefleet_session": f"{payload}.{'0' * len(mac)}"})
    assert forged.get("/ui").status_code == 303
    stale = httpx.Client(base_url=fleet.url).post("/ui/login", data={"token": TOKEN, "nonce": "x"})
    assert stale.status_code == 403 and 'data-code="csrf"' in stale.text
    out = client.post("/ui/logout", data={"csrf": csrf_of(client.get("/ui").text)})
    assert out.status_code == 303
    assert client.get("/ui").status_code == 303
    live = client.get("/ui/rollouts/1/live", headers={"HX-Request": "true"})  # htmx: the whole page goes
    assert live.status_code == 204 and live.headers["hx-redirect"] == "/ui/login?next=%2Fui%2Frollouts%2F1"


def test_revoking_the_token_ends_its_console_session(fleet: Harness) -> None:
    secret = token(fleet, "olga", "operator")
    client, _ = sign_in(fleet.url, secret)
    assert client.get("/ui").status_code == 200
    fleet.api.post("/tokens/olga/revoke")
    assert client.get("/ui").status_code == 303


def test_a_forged_post_without_csrf_or_from_another_origin_is_refused_and_audited(
    fleet: Harness, devices: list[ScriptedDevice], tmp_path: Path, release_key: PrivateKey
) -> None:
    add_release(fleet, tmp_path, release_key, "2.0.0", 2)
    client, _ = sign_in(fleet.url, TOKEN)
    csrf = csrf_of(client.get("/ui/rollouts").text)
    form = {"release": "digits@2.0.0", "stages": "100%", "bake_s": "0"}
    assert client.post("/ui/rollouts", data=form).status_code == 403  # no CSRF token
    assert client.post("/ui/rollouts", data={**form, "csrf": "0" * 40}).status_code == 403
    proxied = {"Origin": f"https://{fleet.url.split('://')[1]}"}  # behind a TLS proxy: same host, https
    assert client.post("/ui/rollouts", data={**form, "stages": "x", "csrf": csrf}, headers=proxied).status_code == 400
    other = client.post("/ui/rollouts", data={**form, "csrf": csrf}, headers={"Origin": "http://evil.example"})
    assert other.status_code == 403 and 'data-code="csrf"' in other.text
    assert fleet.api.get("/rollouts") == []
    refusals = [e for e in fleet.api.get("/audit") if e["action"] == "auth.csrf"]
    assert [e["target"] for e in refusals] == ["POST /ui/rollouts"] * 3
    started = client.post("/ui/rollouts", data={**form, "csrf": csrf})
    assert started.status_code == 303 and started.headers["location"].startswith("/ui/rollouts/")
    (rollout,) = fleet.api.get("/rollouts")
    assert rollout["created_by"] == "alice"
    bad = client.post("/ui/rollouts", data={**form, "stages": "", "csrf": csrf})
    assert bad.status_code == 400 and 'data-code="invalid"' in bad.text and "Traceback" not in bad.text


def test_a_viewer_sees_no_buttons_and_its_posts_are_refused(
    fleet: Harness, devices: list[ScriptedDevice], tmp_path: Path, release_key: PrivateKey
) -> None:
    add_release(fleet, tmp_path, release_key, "2.0.0", 2)
    rid = fleet.api.post("/rollouts", {"release": "digits@2.0.0", "stages": ["1", "100%"], "approval": True})["id"]
    viewer, _ = sign_in(fleet.url, token(fleet, "vera", "viewer"))
    operator, _ = sign_in(fleet.url, TOKEN)
    wait_until(lambda: "btn-approve" in operator.get(f"/ui/rollouts/{rid}").text, 60, "the approve button")
    page = viewer.get(f"/ui/rollouts/{rid}").text
    assert "<button" in page  # sign out
    assert not any(f"btn-{verb}" in page for verb in ("pause", "resume", "abort", "approve", "rollback"))
    assert "Start rollout" not in viewer.get("/ui/rollouts").text
    assert "Start rollout" in operator.get("/ui/rollouts").text
    refused = viewer.post(f"/ui/rollouts/{rid}/abort", data={"csrf": csrf_of(page)})
    assert refused.status_code == 403 and 'data-code="forbidden"' in refused.text
    assert fleet.api.get(f"/rollouts/{rid}")["state"] == "WAITING_APPROVAL"
    assert any(e["actor"] == "vera" and e["action"] == "auth.forbidden" for e in fleet.api.get("/audit"))


def test_pages_show_the_fleet_devices_release_check_and_audit(
    fleet: Harness, devices: list[ScriptedDevice], tmp_path: Path, release_key: PrivateKey
) -> None:
    add_release(fleet, tmp_path, release_key, "2.0.0", 2)
    client, _ = sign_in(fleet.url, TOKEN)
    overview = client.get("/ui").text
    assert ">4</span> online" in overview and "digits@1.0.0" in overview
    listing = client.get("/ui/devices", params={"sku": "b"}).text
    assert "b-0" in listing and "b-1" in listing and "a-0" not in listing
    device = client.get("/ui/devices/a-1")
    assert device.status_code == 200 and "<svg" in device.text and "lat_p95_ms" in device.text
    assert client.get("/ui/devices/nope").status_code == 404
    check = client.get("/ui/releases/digits@2.0.0", params={"check": "true", "selector": "sku=a"}).text
    assert "2 of 2 targeted devices would accept it" in check
    assert "ui.sign-in" in client.get("/ui/audit").text
    assert client.get("/ui/rollouts/999").status_code == 404


def test_device_filters_and_paging_run_in_sql(fleet: Harness) -> None:
    store, fleet_id = fleet.server.store, "default"
    now = time.time()
    for i in range(120):
        info = P.Info("0.1.0", "tflite", "2.16.1", f"s{i % 3}", "aarch64", 1 << 29, model=OLD if i % 2 else None)
        store.devices.record_info(fleet_id, f"dev-{i:03d}", info, now)
        store.devices.record_status(fleet_id, f"dev-{i:03d}", "online" if i % 4 else "offline", now)
    store.devices.tag("dev-007", ["lab%"], [], "test")
    queries = ConsoleQueries(store.db)
    page = queries.devices(fleet_id, DeviceFilter(sku="s1", status="offline"))
    assert page.total == sum(1 for i in range(120) if i % 3 == 1 and i % 4 == 0)
    assert queries.devices(fleet_id, DeviceFilter(tag="lab%")).total == 1
    assert queries.devices(fleet_id, DeviceFilter(tag="lab")).total == 0  # a tag matches whole, wildcards literal
    assert queries.devices(fleet_id, DeviceFilter(q="dev-11")).total == 10
    last = queries.devices(fleet_id, DeviceFilter(page=99), per_page=50)
    assert (last.page, last.pages, [r["id"] for r in last.rows][:1]) == (3, 3, ["dev-100"])
    assert queries.devices(fleet_id, DeviceFilter(version="1.0.0")).total == 60
    client, _ = sign_in(fleet.url, TOKEN)
    html = client.get("/ui/devices", params={"page": "2"}).text
    assert "dev-050" in html and "dev-049" not in html and 'rel="next" href="/ui/devices?page=3"' in html


def test_the_vendored_htmx_matches_its_pinned_integrity(fleet: Harness) -> None:
    data = (HERE / "static" / HTMX).read_bytes()
    assert "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode() == HTMX_SRI
    served = httpx.get(f"{fleet.url}/ui/static/{HTMX}")
    assert served.status_code == 200 and served.content == data
    assert HTMX in (HERE / "static" / "VENDORED.md").read_text()


def test_session_cookies_are_signed_and_expire() -> None:
    codec = SessionCodec.derived(b"k" * 32, ttl_s=60)
    value, session = codec.issue("ab" * 32, 1000.0)
    assert codec.read(value, 1001.0) == session
    assert codec.read(value, 1061.0) is None  # expired
    assert SessionCodec.derived(b"j" * 32).read(value, 1001.0) is None  # another fleet's key
    assert codec.read(value[:-1] + ("0" if value[-1] != "0" else "1"), 1001.0) is None
    assert codec.read("x" * 10_000, 1001.0) is None and codec.read("", 1001.0) is None
    assert session.csrf != codec.issue("ab" * 32, 1000.0)[1].csrf  # a CSRF token per session


def test_charts_scale_skip_gaps_and_describe_themselves() -> None:
    c = chart("p95 latency", "ms", [10.0, None, 20.0, float("nan"), 15.0])
    assert c.count == 3 and (c.low, c.high, c.last) == (10.0, 20.0, 15.0)
    assert c.points.split()[0] == "0.0,46.0" and c.points.split()[1] == "120.0,2.0"
    assert "last 15ms" in c.summary and c.end == ("240.0", "24.0")
    assert chart("flat", "", [0.9, 0.9 - 1e-12]).points == "0.0,24.0 240.0,24.0"
    assert chart("x", "", []).summary == "x: no data"
    row = {"points": 2, "lat_p95_sum": 30.0, "ips_sum": 10.0, "conf_sum": 1.8, "psi_max": 0.1}
    assert [x.last for x in charts([row])] == [15.0, 5.0, 0.9, 0.1]


def test_pause_resume_and_rollback_through_the_forms(fleet: Harness, tmp_path: Path, release_key: PrivateKey) -> None:
    """Devices that never answer keep the rollout RUNNING: the forms pause, resume and roll it back."""
    add_release(fleet, tmp_path, release_key, "2.0.0", 2)
    for i in range(3):
        info = P.Info("0.1.0", "tflite", "2.16.1", "a", "aarch64", 1 << 29, model=OLD)
        fleet.server.store.devices.record_info("default", f"mute-{i}", info, time.time())
        fleet.server.store.devices.record_status("default", f"mute-{i}", "online", time.time())  # yet silent
    client, _ = sign_in(fleet.url, TOKEN)
    csrf = csrf_of(client.get("/ui/rollouts").text)
    started = client.post("/ui/rollouts", data={"release": "digits@2.0.0", "stages": "100%", "csrf": csrf})
    rid = int(started.headers["location"].rsplit("/", 1)[1])
    for verb, state in (("pause", "PAUSED"), ("resume", "RUNNING"), ("rollback", "ROLLED_BACK")):
        page = client.get(f"/ui/rollouts/{rid}").text
        assert f'id="btn-{verb}"' in page
        answer = client.post(f"/ui/rollouts/{rid}/{verb}", data={"csrf": csrf})
        assert answer.status_code == 303, (answer.text[-600:], fleet.api.get(f"/rollouts/{rid}"))
        assert fleet.api.get(f"/rollouts/{rid}")["state"] == state
    again = client.post(f"/ui/rollouts/{rid}/pause", data={"csrf": csrf})
    assert again.status_code == 409 and 'data-code="conflict"' in again.text
    assert client.post(f"/ui/rollouts/{rid}/explode", data={"csrf": csrf}).status_code == 404
    entries = [e for e in fleet.api.get(f"/rollouts/{rid}/audit") if e["action"] == "rollout.transition"]
    assert {e["detail"].split(": ", 1)[1] for e in entries} >= {"paused", "resumed", "rolled back by operator"}
    assert all((e["actor"], e["role"], e["token"]) == ("alice", "admin", "alice") for e in entries)


def test_the_gate_evidence_renders_outcome_and_numbers(fleet: Harness) -> None:
    """The health evidence as ``service.status`` gives it, through the rollout page's live template."""
    from fleet.api_access import Authenticator
    from fleet.rollout.evidence import MetricEvidence, Outcome
    from fleet.ui.console import Console

    ev = MetricEvidence(
        "b", "p95 latency", Outcome.FAIL, (3, 3), (12, 15), 18.0, 10.0, 1.8, 1.5, 1.25, "U", 2.0, 0.003, alpha=0.0033
    )
    status = {"id": 7, "state": "RUNNING", "stage": 0, "phase": "BAKING", "reason": "", "progress": {}, "health": []}
    status["health"] = [ev.to_dict()]
    service = fleet.server.service
    console = Console.create(service, Authenticator.of(service.store, {}, service.signer(), service.clock))
    html = console.env.get_template("rollout_live.html").render(
        who=None, s=status, stages=[], succeeded=0, skus=[], verbs=(), live=True, unsuccessful=[]
    )
    row = html.split('class="outcome-fail"')[1].split("</tr>")[0]
    texts = ("<td>b</td>", "p95 latency", "<td>fail</td>", "18", "10", "1.8", "1.5", ">0.003<", ">0.0033<")
    texts += ("3/3", "12/15")
    for text in texts:
        assert text in row, (text, row)


def test_only_the_console_paths_skip_the_bearer_token() -> None:
    from fleet.access import Role
    from fleet.api_access import required_role

    assert required_role("GET", "/ui") is None and required_role("POST", "/ui/rollouts") is None
    assert required_role("GET", "/uix") is Role.VIEWER and required_role("POST", "/ui-api") is Role.OPERATOR


def test_the_start_form_is_bounded_like_the_api() -> None:
    from fleet.errors import InvalidRequestError
    from fleet.ui.forms import rollout_request

    req = rollout_request({"release": "d@2", "stages": "1, 50%,100%", "health": "1", "health_min_windows": "3"})
    assert req.stages == ("1", "50%", "100%") and req.gates.health is not None
    assert req.gates.health.min_windows == 3 and req.gates.health.settle_s == 10.0  # empty fields: defaults
    assert rollout_request({"release": "d@2", "stages": "100%"}).gates.health is None
    for bad, words in (
        ({"bake_s": "nan"}, "bake_s: nan must be between"),
        ({"bake_s": "-1"}, "bake_s: -1 must be between 0 and"),
        ({"health": "1", "health_consecutive": "1.5"}, "health_consecutive: '1.5' is not a number"),
        ({"failure": "200%"}, "out of range"),
        ({"stages": ""}, "stages: give 1 to 20"),
    ):
        with pytest.raises(InvalidRequestError, match=words):
            rollout_request({"release": "d@2", "stages": "100%", **bad})


def test_per_sku_counts_tell_a_device_s_own_rollback_from_a_commanded_one(
    broker: LocalBroker, fleet: Harness, tmp_path: Path, release_key: PrivateKey
) -> None:
    def own_gate_on_b(sku: str, release: str) -> tuple[D, str] | None:
        return (D.ROLLED_BACK, "probation-latency") if sku == "b" else None

    started = start_fleet(broker.url, "default", {"a": 2, "b": 2}, OLD, fault=own_gate_on_b)
    try:
        wait_until(lambda: len(fleet.api.get("/devices")) == 4, 30, "4 devices registered")
        add_release(fleet, tmp_path, release_key, "2.0.0", 2)
        rid = fleet.api.post("/rollouts", {"release": "digits@2.0.0", "stages": ["100%"], "gates": {"health": False}})
        done = wait_until(  # aborted by the failure gate, and the sku a devices it changed rolled back on command
            lambda: (
                (s := fleet.api.get(f"/rollouts/{rid['id']}"))["state"] == "ABORTED"
                and s["progress"].get("ROLLED_BACK") == 4
                and s
            ),
            60,
            "the abort and its rollbacks",
        )
        assert done["reason"].startswith("failure threshold")
        per_sku = {k["sku"]: k for k in ConsoleQueries(fleet.server.store.db).per_sku(rid["id"])}
        assert per_sku["b"]["states"] == {"SELF_ROLLED_BACK": 2}
        assert per_sku["b"]["reasons"] == {"probation-latency": 2}
        assert per_sku["a"]["states"] == {"ROLLED_BACK": 2}
    finally:
        for d in started:
            d.stop()


def test_device_tags_for_operators_and_admission_for_admins_only(fleet: Harness) -> None:
    info = P.Info("0.1.0", "tflite", "2.16.1", "a", "aarch64", 1 << 29, model=OLD)
    fleet.server.store.devices.record_info("default", "cam-1", info, time.time())
    viewer, _ = sign_in(fleet.url, token(fleet, "vera", "viewer"))
    operator, _ = sign_in(fleet.url, token(fleet, "olga", "operator"))
    admin, _ = sign_in(fleet.url, TOKEN)
    assert 'id="tags-form"' not in viewer.get("/ui/devices/cam-1").text
    page = operator.get("/ui/devices/cam-1").text
    assert 'id="tags-form"' in page and 'id="btn-reject"' not in page
    csrf = csrf_of(page)
    assert operator.post("/ui/devices/cam-1/tags", data={"add": "lab, roof", "csrf": csrf}).status_code == 303
    assert operator.post("/ui/devices/cam-1/tags", data={"remove": "lab", "csrf": csrf}).status_code == 303
    assert fleet.api.get("/devices/cam-1")["tags"] == ["roof"]
    too_many = operator.post("/ui/devices/cam-1/tags", data={"add": ",".join(map(str, range(65))), "csrf": csrf})
    assert too_many.status_code == 400 and 'data-code="invalid"' in too_many.text
    refused = operator.post("/ui/devices/cam-1/admission/reject", data={"csrf": csrf})
    assert refused.status_code == 403 and 'data-code="forbidden"' in refused.text
    admin_page = admin.get("/ui/devices/cam-1").text
    assert 'id="btn-reject"' in admin_page and 'id="btn-accept"' not in admin_page
    assert admin.post("/ui/devices/cam-1/admission/reject", data={"csrf": csrf_of(admin_page)}).status_code == 303
    assert fleet.api.get("/devices/cam-1")["admission"] == "rejected"
    assert 'id="btn-accept"' in admin.get("/ui/devices/cam-1").text
    assert admin.post("/ui/devices/nope/admission/accept", data={"csrf": csrf_of(admin_page)}).status_code == 404
    actions = {(e["actor"], e["action"]) for e in fleet.api.get("/audit")}
    assert {("olga", "device.tag"), ("alice", "device.reject"), ("olga", "auth.forbidden")} <= actions
