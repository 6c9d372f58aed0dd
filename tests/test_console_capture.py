"""The console's "Captured data" page over real HTTP (a real fleet manager on uvicorn, a real broker): policies
enabled and disabled from forms, what each device holds, samples filtered and paged in SQL, labels, an export
downloaded as the API's .npz, purges by an admin only; each form's role enforced by the server and audited,
and what a role may not do not offered. The browser test is in tests/test_console_capture_browser.py."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from device_agent import protocol as P
from device_agent.bundle import PrivateKey, TrustStore
from device_agent.capture.policy import CapturePolicy
from device_agent.capture.sampler import Sampler
from device_agent.capture.store import CaptureStore
from device_agent.capture.upload import Uploader
from device_agent.engine import InferenceEngine
from device_agent.model import LoadedModel
from fleet.broker import LocalBroker
from fleet.ui.capture import SampleFilter, since_of
from tests.support.agent_harness import package_tiny
from tests.support.console import csrf_of, sign_in
from tests.support.fleet_harness import TOKEN, Harness, running_fleet

FLEET = "f"
DEVICES = {"dev-a": "a", "dev-b1": "b", "dev-b2": "b"}
FORMS = ("/ui/capture/policies", "/ui/capture/labels", "btn-export", "btn-purge", "btn-enable")


@pytest.fixture
def fleet(broker: LocalBroker, tmp_path: Path, key_files: tuple[Path, Path]) -> Iterator[Harness]:
    with running_fleet(broker.url, tmp_path / "fm", key_files[1], fleet=FLEET) as h:
        model = P.ModelRef("digits", "1.0.0", 1, "0" * 64)
        for device, sku in DEVICES.items():
            info = P.Info("0.1.0", "tflite", "2.0", sku, "x86_64", 1 << 30, model=model)
            h.server.store.devices.record_info(FLEET, device, info, time.time())
        yield h


def sample_row(device: str, sample: str, ts: float, reason: str = "random") -> dict[str, Any]:
    """An index row as an upload writes it (these tests read the index; the export test uploads for real)."""
    return {
        "fleet": FLEET, "device": device, "id": sample, "sku": DEVICES[device], "policy": "p1",
        "model_name": "digits", "model_version": "1.0.0", "model_sha256": "0" * 64, "ts": ts, "reason": reason,
        "score": 0.25, "top1": 3, "conf": 0.25, "label": None, "path": f"/nowhere/{sample}", "size": 100,
        "sha256": "1" * 64, "received_at": ts,
    }  # fmt: skip


def samples_of(page: str) -> str:
    """The samples table of a capture page."""
    return page.split('id="samples"')[1].split("</table>", maxsplit=1)[0]


def token(h: Harness, name: str, role: str) -> str:
    return str(h.api.post("/tokens", {"name": name, "role": role})["secret"])


def post(client: httpx.Client, path: str, **form: str) -> httpx.Response:
    """A console form as a browser posts it: with the CSRF token of the capture page."""
    return client.post(path, data={**form, "csrf": csrf_of(client.get("/ui/capture").text)})


def enable(client: httpx.Client, **form: str) -> httpx.Response:
    fields = {"selector": "sku=b", "rules": "low-confidence:0.6, drift", "max_mb": "5", "until": "7d"}
    return post(client, "/ui/capture/policies", **(fields | form))


def test_a_policy_enabled_from_the_form_is_the_apis_and_reaches_its_devices(fleet: Harness) -> None:
    client, _ = sign_in(fleet.url, TOKEN)
    empty = client.get("/ui/capture")
    assert empty.status_code == 200 and "No capture policy yet." in empty.text and 'href="/ui/capture"' in empty.text
    assert enable(client, per_class_max="50").status_code == 303
    (policy,) = fleet.api.get("/capture/status")["policies"]
    assert policy["selector"] == "sku=b" and policy["created_by"] == "alice" and policy["enabled"]
    assert policy["rules"] == {
        "low_confidence": 0.6, "drift": 0.5, "per_class_max": 50, "max_bytes": 5 << 20, "max_per_hour": 120
    }  # fmt: skip
    page = client.get("/ui/capture").text
    assert f"p{policy['id']}" in page and "low-confidence:0.6, drift:0.5" in page and "5.0 MiB" in page
    held = page.split('id="held"')[1].split("</table>")[0]
    assert "dev-b1" in held and "dev-b2" in held and "dev-a" not in held  # the selector's devices, no other
    assert any(e["action"] == "capture.enable" and e["actor"] == "alice" for e in fleet.api.get("/audit"))

    bad = enable(client, rules="sometimes")
    assert bad.status_code == 400 and 'data-code="invalid"' in bad.text and "Traceback" not in bad.text
    assert enable(client, max_mb="-1").status_code == 400  # the API's own bounds (EnableIn)
    assert len(fleet.api.get("/capture/status")["policies"]) == 1
    assert post(client, "/ui/capture/policies/disable", selector="sku=b").status_code == 303
    assert not fleet.api.get("/capture/status")["policies"][0]["enabled"]
    assert "state-disabled" in client.get("/ui/capture").text
    fleet.server.store.devices.tag("dev-a", ["lab"], [], "test")
    assert enable(client, selector="tag=lab").status_code == 303  # a tag selector: the devices' tags are read
    held = client.get("/ui/capture").text.split('id="held"')[1].split("</table>", maxsplit=1)[0]
    assert "dev-a</a></td><td>a</td>\n      <td>p2 (on)" in held


def test_samples_are_filtered_and_paged_in_sql(fleet: Harness) -> None:
    now = time.time()
    rows = [sample_row("dev-b1", f"s{i:03d}", now - 7200 - i) for i in range(60)]
    rows += [sample_row("dev-b2", f"d{i}", now - 60 * i, "drift") for i in range(3)]
    fleet.server.store.captures.add(rows, "dev-b1", "test")
    client, _ = sign_in(fleet.url, TOKEN)
    first = client.get("/ui/capture").text
    assert "Samples <small>(63)</small>" in first and "page 1 of 2" in first
    listed = samples_of(first)
    assert listed.count("<td>digits@1.0.0</td>") == 50  # a page: 50 rows
    assert listed.index("dev-b2") < listed.index("dev-b1")  # newest first
    assert 'rel="next" href="/ui/capture?page=2"' in first
    second = client.get("/ui/capture", params={"page": "2"}).text
    assert second.count("<td>digits@1.0.0</td>") == 13 and "page 2 of 2" in second
    drift = client.get("/ui/capture", params={"reason": "drift"}).text
    assert "Samples <small>(3)</small>" in drift and "dev-b1" not in samples_of(drift)
    assert "Samples <small>(60)</small>" in client.get("/ui/capture", params={"device": "dev-b1"}).text
    assert "Samples <small>(3)</small>" in client.get("/ui/capture", params={"since": "1h"}).text
    for bad in ({"reason": "whim"}, {"since": "yesterday-ish"}):
        refused = client.get("/ui/capture", params=bad)
        assert refused.status_code == 400 and 'data-code="invalid"' in refused.text and "Traceback" not in refused.text
    assert since_of("2026-12-01", 0) == 1796083200.0 and since_of("", 5) is None
    assert SampleFilter(device="dev-b1", page=2).link(page=1) == "/ui/capture?device=dev-b1"


def test_roles_are_offered_what_the_api_allows_and_refused_the_rest(fleet: Harness) -> None:
    now = time.time()
    fleet.server.store.captures.add([sample_row("dev-b1", "s1", now), sample_row("dev-b2", "s2", now)], "x", "test")
    admin, _ = sign_in(fleet.url, TOKEN)
    assert enable(admin).status_code == 303
    viewer, _ = sign_in(fleet.url, token(fleet, "vera", "viewer"))
    operator, _ = sign_in(fleet.url, token(fleet, "olga", "operator"))
    seen = viewer.get("/ui/capture").text
    assert "dev-b1" in seen and not any(form in seen for form in FORMS) and ">Disable<" not in seen
    offered = operator.get("/ui/capture", params={"device": "dev-b2"}).text
    assert all(f in offered for f in FORMS[:-2]) and ">Disable<" in offered and "btn-purge" not in offered
    assert "btn-purge" in admin.get("/ui/capture", params={"device": "dev-b2"}).text
    assert "btn-purge" not in admin.get("/ui/capture").text  # purging everything is not offered

    for path, form in (
        ("/ui/capture/policies", {"selector": "", "rules": "random:0.5"}),
        ("/ui/capture/labels", {"device": "dev-b1", "id": "s1", "label": "7"}),
        ("/ui/capture/policies/disable", {"selector": "sku=b"}),
    ):
        refused = post(viewer, path, **form)
        assert refused.status_code == 403 and 'data-code="forbidden"' in refused.text
    refused = post(operator, "/ui/capture/purge", device="dev-b2", confirm="yes")
    assert refused.status_code == 403 and 'data-code="forbidden"' in refused.text
    forged = operator.post("/ui/capture/labels", data={"device": "dev-b1", "id": "s1", "label": "7"})
    assert forged.status_code == 403 and 'data-code="csrf"' in forged.text
    assert [s["label"] for s in fleet.api.get("/capture/samples")] == [None, None]
    assert fleet.api.get("/capture/status")["policies"][0]["enabled"]
    audit = fleet.api.get("/audit")
    assert {(e["actor"], e["action"]) for e in audit} >= {("vera", "auth.forbidden"), ("olga", "auth.forbidden")}
    assert any(e["actor"] == "olga" and e["action"] == "auth.csrf" for e in audit)

    back = "/ui/capture?device=dev-b1"
    labelled = post(operator, "/ui/capture/labels", device="dev-b1", id="s1", label="7", back=back)
    assert labelled.status_code == 303 and labelled.headers["location"] == back
    assert {s["id"]: s["label"] for s in fleet.api.get("/capture/samples")} == {"s1": "7", "s2": None}
    assert post(operator, "/ui/capture/labels", device="dev-b1", id="nope", label="1").status_code == 404
    assert post(admin, "/ui/capture/purge", confirm="yes").status_code == 400  # a filter is required
    assert post(admin, "/ui/capture/purge", device="dev-b2").status_code == 400  # and the box ticked
    assert post(admin, "/ui/capture/purge", device="dev-b2", confirm="yes").status_code == 303
    assert [s["id"] for s in fleet.api.get("/capture/samples")] == ["s1"]
    actions = [(e["actor"], e["action"]) for e in fleet.api.get("/audit")]
    assert ("olga", "capture.label") in actions and ("alice", "capture.purge") in actions


def _uploaded(h: Harness, tmp: Path, model: LoadedModel, n: int) -> None:
    """``n`` samples captured by a real inference engine on dev-b1 and uploaded over HTTP with its token."""
    policy = h.server.service.capture.policies.device_policy("dev-b1", "b", [], time.time())  # type: ignore[union-attr]
    assert policy is not None and policy.upload_url and policy.token
    store = CaptureStore(tmp, 1 << 22, 1000)
    sampler = Sampler(store, {"fleet": FLEET, "device": "dev-b1"})
    sampler.set_policy(CapturePolicy("p1", random=1.0, max_per_hour=10_000))
    engine = InferenceEngine(model)
    engine.capture = sampler
    inputs, _ = model.selftest_samples()
    for i in range(n):
        engine.predict({k: v[i % len(v) : i % len(v) + 1] for k, v in inputs.items()})
    sampler.drain()
    assert Uploader(store, f"{FLEET}/dev-b1").upload_once(policy.upload_url, policy.token, 32).confirmed == n


def test_export_downloads_the_apis_npz(
    fleet: Harness, tmp_path: Path, tiny_models: dict[str, Path], release_key: PrivateKey
) -> None:
    data = package_tiny(tiny_models, release_key, "1.0.0", 1)
    model = LoadedModel.load(data, TrustStore.of([release_key.public_key]), slot="a")
    client, _ = sign_in(fleet.url, TOKEN)
    assert enable(client, rules="random:1").status_code == 303
    _uploaded(fleet, tmp_path / "dev", model, 4)
    assert "Samples <small>(4)</small>" in client.get("/ui/capture").text
    exported = post(client, "/ui/capture/exports", device="dev-b1")
    assert exported.status_code == 303
    location = exported.headers["location"]
    sha = location.removeprefix("/ui/capture/exports/").removesuffix(".npz")
    npz = client.get(location)
    assert npz.status_code == 200 and hashlib.sha256(npz.content).hexdigest() == sha
    api = httpx.get(f"{fleet.url}/api/v1/capture/exports/{sha}.npz", headers={"Authorization": f"Bearer {TOKEN}"})
    assert api.content == npz.content  # the API's export, not a copy of our own making
    assert any(e["action"] == "capture.export" and e["actor"] == "alice" for e in fleet.api.get("/audit"))
    assert post(client, "/ui/capture/exports", device="nobody").status_code == 404
    assert httpx.get(f"{fleet.url}{location}").status_code == 303  # no session: to sign-in
