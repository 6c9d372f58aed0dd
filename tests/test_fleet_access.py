"""Access control of the fleet manager against a running one: every route needs a token with the right
role, tokens are hashed, expire and are revoked for every process on the store, artifacts need a signed
URL, limits hold before any work, and every refusal leaves the store as it was (issue 14's "Why")."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from device_agent import protocol as P
from device_agent.bundle import PrivateKey
from fleet.broker import LocalBroker
from fleet.cli import cli
from fleet.store import tables as t
from tests.support.bundles import simple_bundle
from tests.support.fleet_harness import TOKEN, Harness, add_release, running_fleet, wait_until
from tests.support.scripted_device import ScriptedDevice
from tests.test_access_store import together

AUTH = {"Authorization": f"Bearer {TOKEN}"}
OLD = P.ModelRef("digits", "1.0.0", 1, "1" * 64)


@pytest.fixture
def h(broker: LocalBroker, tmp_path: Path, key_files: tuple[Path, Path]) -> Iterator[Harness]:
    with running_fleet(broker.url, tmp_path, key_files[1]) as harness:
        yield harness


def fleetctl(h: Harness, *args: str, token: str | None = TOKEN) -> tuple[int, str]:
    env = {"FLEETCTL_SERVER": h.url, **({"FLEETCTL_TOKEN": token} if token else {})}
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.output  # stdout and stderr


def create_token(h: Harness, name: str, role: str, *extra: str) -> str:
    code, out = fleetctl(h, "tokens", "create", name, "--role", role, *extra, "--json")
    assert code == 0, out
    return str(json.loads(out)["secret"])


def as_(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def audit_actions(h: Harness) -> list[str]:
    return [r["action"] for r in h.api.get("/audit", limit=1000)]


READS = ["/api/v1/devices", "/api/v1/releases", "/api/v1/rollouts", "/api/v1/audit", "/api/v1/health", "/metrics"]


def test_every_read_needs_a_token_and_no_path_leaks(h: Harness, tmp_path: Path, release_key: PrivateKey) -> None:
    row = add_release(h, tmp_path, release_key, "2.0.0", 2)
    for path in [*READS, f"/artifacts/{row['sha256']}.efb"]:
        r = httpx.get(h.url + path)
        assert (r.status_code, r.json()["code"]) == (401, "unauthorized"), path
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{h.url}/healthz").json() == {"ok": True}  # the one public route
    viewer = create_token(h, "grafana", "viewer")
    for path in READS:
        assert httpx.get(h.url + path, headers=as_(viewer)).status_code == 200, path
    shown = httpx.get(f"{h.url}/api/v1/releases", headers=as_(viewer)).text
    assert str(h.server.config.artifacts) not in shown and "artifact" not in json.loads(shown)[0]
    refused = [r for r in h.api.get("/audit", limit=1000) if r["action"] == "auth.unauthorized"]
    assert len(refused) == len(READS) + 1 and {r["source"] for r in refused} == {"127.0.0.1"}


def test_roles_viewer_reads_operator_changes_admin_manages(h: Harness, tmp_path: Path, release_key: PrivateKey) -> None:
    add_release(h, tmp_path, release_key, "2.0.0", 2)
    viewer, operator = create_token(h, "dash", "viewer"), create_token(h, "ci", "operator")
    body = {"release": "digits@2.0.0", "stages": ["100%"]}
    r = httpx.post(f"{h.url}/api/v1/rollouts", json=body, headers=as_(viewer))
    assert (r.status_code, r.json()["code"]) == (403, "forbidden") and "needs the operator role" in r.json()["error"]
    assert (
        httpx.post(f"{h.url}/api/v1/rollback", json={"release": "digits@2.0.0"}, headers=as_(viewer)).status_code == 403
    )
    assert (
        httpx.post(f"{h.url}/api/v1/tokens", json={"name": "x", "role": "admin"}, headers=as_(operator)).status_code
        == 403
    )
    assert httpx.get(f"{h.url}/api/v1/tokens", headers=as_(operator)).status_code == 403
    r = httpx.post(f"{h.url}/api/v1/rollouts", json=body, headers=as_(operator))
    assert (r.status_code, r.json()["code"]) == (400, "invalid")  # allowed; refused only for having no device
    assert h.api.get("/rollouts") == [] and [t["name"] for t in h.api.get("/tokens")] == ["ci", "dash"]
    forbidden = [r for r in h.api.get("/audit", limit=1000) if r["action"] == "auth.forbidden"]
    assert {(r["token"], r["role"]) for r in forbidden} == {("dash", "viewer"), ("ci", "operator")}


def test_tokens_are_hashed_listed_expire_and_are_revoked(h: Harness) -> None:
    code, out = fleetctl(h, "tokens", "create", "alice-laptop", "--role", "operator", "--expires", "30d")
    secret = out.splitlines()[0]
    assert code == 0 and "shown only now" in out and len(secret) >= 40
    with h.server.store.engine.connect() as conn:
        stored = conn.execute(sa.select(t.tokens)).mappings().one()
    assert secret not in json.dumps(dict(stored)) and stored["hash"] != secret and stored["expires_at"] > 0
    code, out = fleetctl(h, "tokens", "ls", "--json")
    assert [(r["name"], r["role"]) for r in json.loads(out)] == [("alice-laptop", "operator")]
    assert "hash" not in json.loads(out)[0] and secret not in out
    assert httpx.get(f"{h.url}/api/v1/devices", headers=as_(secret)).status_code == 200
    assert fleetctl(h, "tokens", "revoke", "alice-laptop")[0] == 0
    r = httpx.get(f"{h.url}/api/v1/devices", headers=as_(secret))
    assert (r.status_code, r.json()["error"]) == (401, "token alice-laptop is revoked")
    code, out = fleetctl(h, "tokens", "create", "alice-laptop", "--role", "viewer")
    assert code == 1 and "exists already" in out  # a revoked name is not reused
    code, out = fleetctl(h, "tokens", "create", "bad", "--role", "viewer", "--expires", "soon")
    assert code == 1 and "must be a positive NUMBER" in out
    short = create_token(h, "short2", "viewer", "--expires", "1h")
    with h.server.store.engine.begin() as conn:  # its hour is over (the expiry moved into the past)
        conn.execute(t.tokens.update().where(t.tokens.c.name == "short2").values(expires_at=1.0))
    r = httpx.get(f"{h.url}/api/v1/devices", headers=as_(short))
    assert (r.status_code, r.json()["error"]) == (401, "token short2 has expired")
    assert {"token.create", "token.revoke"} <= set(audit_actions(h))


def test_a_second_process_on_the_same_store_refuses_revoked_and_expired_tokens(
    broker: LocalBroker, tmp_path: Path, key_files: tuple[Path, Path], store_url: str
) -> None:
    with (
        running_fleet(broker.url, tmp_path, key_files[1], db=store_url) as first,
        running_fleet(broker.url, tmp_path / "b", key_files[1], db=store_url, instance="second") as second,
    ):
        viewer = create_token(first, "dash", "viewer")
        old = create_token(first, "old", "viewer", "--expires", "1h")
        assert httpx.get(f"{second.url}/api/v1/devices", headers=as_(viewer)).status_code == 200
        assert fleetctl(first, "tokens", "revoke", "dash")[0] == 0
        r = httpx.get(f"{second.url}/api/v1/devices", headers=as_(viewer))
        assert (r.status_code, r.json()["error"]) == (401, "token dash is revoked")
        with first.server.store.engine.begin() as conn:
            conn.execute(t.tokens.update().where(t.tokens.c.name == "old").values(expires_at=1.0))
        r = httpx.get(f"{second.url}/api/v1/devices", headers=as_(old))
        assert (r.status_code, r.json()["error"]) == (401, "token old has expired")
        signed = first.server.signer.query("a" * 64, "d1", "cam-1", 0.0)
        assert second.server.signer.query("a" * 64, "d1", "cam-1", 0.0) == signed  # one key per fleet


def raw_post(h: Harness, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """POST over a plain socket, declaring whatever Content-Length ``headers`` say but sending only ``body``:
    what the server answers before reading a body it was promised."""
    host, port = h.url.removeprefix("http://").split(":")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall("\r\n".join(lines).encode() + body)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def test_limits_and_auth_come_before_any_body_is_read(h: Harness) -> None:
    huge = {"Content-Length": str(400 << 20), "Content-Type": "application/json"}
    assert raw_post(h, "/api/v1/rollouts", huge) == (401, {"error": _missing(), "code": "unauthorized"})
    status, body = raw_post(h, "/api/v1/rollouts", {**huge, **AUTH})
    assert (status, body["code"]) == (413, "too-large")  # a valid token, but 400 MiB of JSON is refused unread
    status, body = raw_post(h, "/api/v1/releases", {"Content-Length": str(2 << 30), **AUTH})
    assert (status, body["code"]) == (413, "too-large")
    bad_json = b'{"release": '
    status, body = raw_post(h, "/api/v1/rollouts", {"Content-Length": str(len(bad_json))}, bad_json)
    assert (status, body["code"]) == (401, "unauthorized")  # the token is checked before the JSON is parsed
    r = httpx.post(f"{h.url}/api/v1/rollouts", content=bad_json, headers={**AUTH, "Content-Type": "application/json"})
    assert (r.status_code, r.json()["code"]) == (422, "invalid")
    assert h.api.get("/rollouts") == [] and list(h.server.config.artifacts.glob("*")) == []


def _missing() -> str:
    return "missing bearer token: pass --token to fleetctl or set FLEETCTL_TOKEN"


@pytest.mark.parametrize(
    ("gates", "field"),
    [
        ({"bake_s": float("inf")}, "bake_s"),
        ({"max_p95_ratio": float("nan")}, "max_p95_ratio"),
        ({"max_psi": -1.0}, "max_psi"),
        ({"retries": 2**64}, "retries"),
        ({"max_concurrent": 2**63}, "max_concurrent"),
    ],
)
def test_non_finite_and_out_of_range_numbers_are_refused(
    h: Harness, tmp_path: Path, release_key: PrivateKey, gates: dict[str, float], field: str
) -> None:
    add_release(h, tmp_path, release_key, "2.0.0", 2)
    body = json.dumps({"release": "digits@2.0.0", "stages": ["100%"], "gates": gates})  # NaN/Infinity as Python writes
    r = httpx.post(f"{h.url}/api/v1/rollouts", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert (r.status_code, r.json()["code"]) == (422, "invalid") and f"gates.{field}" in r.json()["error"]
    assert h.api.get("/rollouts") == []


def test_rollout_ids_out_of_range_are_422_not_500(h: Harness) -> None:
    for rid in (2**63, 2**31, 0, -1):
        for method, path in [
            ("GET", f"/rollouts/{rid}"),
            ("GET", f"/rollouts/{rid}/deployments"),
            ("GET", f"/rollouts/{rid}/audit"),
            ("POST", f"/rollouts/{rid}/pause"),
        ]:
            r = httpx.request(method, f"{h.url}/api/v1{path}", headers=AUTH)
            assert (r.status_code, r.json()["code"]) == (422, "invalid"), (method, path)
    r = httpx.get(f"{h.url}/api/v1/rollouts/{2**31 - 1}", headers=AUTH)
    assert (r.status_code, r.json()["code"]) == (404, "not-found")
    r = httpx.get(f"{h.url}/api/v1/nowhere", headers=AUTH)
    assert (r.status_code, r.json()) == (404, {"error": "Not Found", "code": "not-found"})


def test_devices_download_with_signed_urls_bound_to_device_artifact_and_time(
    h: Harness, broker: LocalBroker, tmp_path: Path, release_key: PrivateKey
) -> None:
    from fleet.access import UrlSigner

    row = add_release(h, tmp_path, release_key, "2.0.0", 2)
    other = add_release(h, tmp_path, release_key, "3.0.0", 3)
    dev = ScriptedDevice(broker.url, "default", "cam-1", "pi4", OLD).start()
    try:
        wait_until(lambda: [d for d in h.api.get("/devices") if d["sku"]], what="cam-1 registered")
        rid = h.api.post("/rollouts", {"release": "digits@2.0.0", "stages": ["100%"]})["id"]
        wait_until(lambda: h.api.get(f"/rollouts/{rid}")["state"] == "SUCCEEDED", what="rollout done")
    finally:
        dev.stop()
    url = next(p["url"] for kind, p in dev.received if kind == P.CMD_DEPLOY)
    assert isinstance(url, str) and "sig=" in url and "dev=cam-1" in url and dev.model.version == "2.0.0"
    data = (tmp_path / "digits-2.0.0.efb").read_bytes()
    part = httpx.get(url, headers={"Range": "bytes=100-"})  # a resume on the same signed URL
    assert (part.status_code, part.content) == (206, data[100:])
    base = f"{h.url}/artifacts/{row['sha256']}.efb"
    for wrong in (
        url.replace("dev=cam-1", "dev=cam-2"),  # another device
        url.replace(row["sha256"], other["sha256"]),  # another artifact
        url.replace("sig=", "sig=0"),
        f"{base}?{UrlSigner(b'k' * 32).query(row['sha256'], 'd', 'cam-1', 1e10)}",  # another key
    ):
        r = httpx.get(wrong)
        assert (r.status_code, r.json()) == (403, {"error": "artifact URL refused: bad-signature", "code": "forbidden"})
    expired = UrlSigner(h.server.signer.key, ttl_s=-1).query(row["sha256"], "d", "cam-1", 1e9)
    r = httpx.get(f"{base}?{expired}")
    assert (r.status_code, r.json()["error"]) == (403, "artifact URL refused: url-expired")
    assert httpx.get(base).status_code == 401
    assert audit_actions(h).count("auth.forbidden") == 5


def test_manual_admission_pending_devices_are_never_targeted(
    broker: LocalBroker, tmp_path: Path, key_files: tuple[Path, Path], release_key: PrivateKey
) -> None:
    with running_fleet(broker.url, tmp_path, key_files[1], admission="manual", max_devices=3) as h:
        devs = [ScriptedDevice(broker.url, "default", f"cam-{i}", "pi4", OLD).start() for i in range(4)]
        try:
            wait_until(lambda: len([d for d in h.api.get("/devices") if d["sku"]]) == 3, what="3 devices registered")
            assert {d["admission"] for d in h.api.get("/devices")} == {"pending"}
            assert h.server.store.devices.over_cap >= 1  # the fourth was not registered: the fleet is full
            add_release(h, tmp_path, release_key, "2.0.0", 2)
            code, out = fleetctl(h, "rollout", "start", "digits@2.0.0", "--stages", "100")
            assert code == 1 and "no device matches" in out
            assert fleetctl(h, "devices", "accept")[0] == 2  # IDs or --all-pending
            code, out = fleetctl(h, "devices", "reject", "cam-0", "--json")
            assert code == 0 and json.loads(out) == {"admission": "rejected", "devices": ["cam-0"]}
            code, out = fleetctl(h, "devices", "accept", "--all-pending")
            assert code == 0 and out.strip() == "accepted: 2 device(s) cam-1 cam-2"
            rid = h.api.post("/rollouts", {"release": "digits@2.0.0", "stages": ["100%"]})["id"]
            wait_until(lambda: h.api.get(f"/rollouts/{rid}")["state"] == "SUCCEEDED", what="rollout done")
            targeted = {d["device_id"] for d in h.api.get(f"/rollouts/{rid}/deployments")}
            assert targeted == {"cam-1", "cam-2"} and devs[0].model.version == "1.0.0"
            viewer = create_token(h, "dash", "viewer")
            assert fleetctl(h, "devices", "accept", "cam-0", token=viewer)[0] == 1
            assert {"device.accept", "device.reject"} <= set(audit_actions(h))
        finally:
            for dev in devs:
                dev.stop()


def test_audit_records_who_how_and_from_where(h: Harness, tmp_path: Path, release_key: PrivateKey) -> None:
    operator = create_token(h, "ci", "operator")
    bundle = tmp_path / "b.efb"
    bundle.write_bytes(simple_bundle(release_key, version="2.0.0", sequence=2))
    assert fleetctl(h, "releases", "add", str(bundle), token=operator)[0] == 0
    assert fleetctl(h, "devices", "ls", token="not-a-token-at-all")[0] == 1
    code, out = fleetctl(h, "audit", "--actor", "ci", "--json")
    rows = json.loads(out)
    assert code == 0 and [(r["action"], r["role"], r["token"], r["source"]) for r in rows] == [
        ("release.add", "operator", "ci", "127.0.0.1")
    ]
    assert rows[0]["target"] == "release/digits@2.0.0"
    code, out = fleetctl(h, "audit", "--since", "10m", "--json")
    actions = [r["action"] for r in json.loads(out)]
    assert actions == ["auth.unauthorized", "release.add", "token.create"]
    refused = json.loads(out)[0]
    assert (refused["actor"], refused["detail"], refused["target"]) == ("-", "invalid token", "GET /api/v1/devices")
    code, out = fleetctl(h, "audit", "--since", "2100000000", "--json")
    assert code == 0 and json.loads(out) == []
    code, out = fleetctl(h, "audit", "--since", "yesterday")
    assert code == 2 and "--since" in out
    code, out = fleetctl(h, "audit")
    assert code == 0 and out.splitlines()[0].split() == [
        "TS",
        "ACTOR",
        "ROLE",
        "TOKEN",
        "SOURCE",
        "ACTION",
        "TARGET",
        "DETAIL",
    ]


def test_parallel_tag_requests_keep_every_tag(h: Harness) -> None:
    h.server.store.devices.record_status("default", "cam-1", "online", 1.0)
    statuses: list[int] = []
    url = f"{h.url}/api/v1/devices/cam-1/tags"

    def tag(i: int) -> None:
        statuses.append(httpx.post(url, json={"add": [f"t{i}"]}, headers=AUTH, timeout=120).status_code)

    errors = together(32, tag)
    assert (errors, statuses) == ([], [200] * 32)
    assert h.api.get("/devices/cam-1")["tags"] == sorted(f"t{i}" for i in range(32))
    assert audit_actions(h).count("device.tag") == 32


def test_a_chunked_json_body_is_capped_too(h: Harness) -> None:
    def chunks(n: int) -> Iterator[bytes]:
        yield b'{"add": ["a"], "pad": "'
        yield from (b"x" * 4096 for _ in range(n))
        yield b'"}'

    h.server.store.devices.record_status("default", "cam-1", "online", 1.0)
    url, headers = f"{h.url}/api/v1/devices/cam-1/tags", {**AUTH, "Content-Type": "application/json"}
    r = httpx.post(url, content=chunks(100), headers=headers)  # 400 KiB without a Content-Length
    assert (r.status_code, r.json()["code"]) == (413, "too-large")
    assert h.api.get("/devices/cam-1")["tags"] == []
    r = httpx.post(url, content=chunks(2), headers=headers)  # 8 KiB: read and served
    assert (r.status_code, r.json()["tags"]) == (200, ["a"])
