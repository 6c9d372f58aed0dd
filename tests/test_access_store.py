"""Read-modify-writes of the store done atomically, with concurrent writers in two stores (as two
fleet-manager processes would be) on SQLite and PostgreSQL; and the pure access helpers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from device_agent import protocol as P
from fleet.access import Role, UrlSigner, hash_secret, parse_duration
from fleet.api_access import AUDITED_REFUSALS, Authenticator, required_role
from fleet.errors import AuthError, ConflictError, InvalidRequestError
from fleet.rollout.model import Deploy, RolloutSpec, Selector, Stage, Threshold
from fleet.store import Store
from tests.test_store import release_row

WRITERS = 32


def together(n: int, work: Callable[[int], object]) -> list[BaseException]:
    """Run ``work(i)`` for i < n in n threads released at once; the exceptions raised."""
    barrier, errors = threading.Barrier(n), []

    def run(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_concurrent_tag_additions_are_all_kept(store_url: str) -> None:
    stores = [Store(store_url), Store(store_url)]
    stores[0].devices.record_status("default", "cam-1", "online", 1.0)
    errors = together(WRITERS, lambda i: stores[i % 2].devices.tag("cam-1", [f"t{i}"], [], actor=f"op{i}"))
    assert errors == []
    assert stores[0].devices.get("cam-1").tags == sorted(f"t{i}" for i in range(WRITERS))
    assert len(stores[0].audit.log("device/cam-1", 1000)) == WRITERS
    for store in stores:
        store.close()


def test_a_deployment_event_is_applied_once_by_concurrent_ingests(store_url: str) -> None:
    stores = [Store(store_url), Store(store_url)]
    release = release_row(stores[0])
    spec = RolloutSpec(release.ref, release.sequence, (Stage(Threshold.parse("100%")),), Selector.parse(""))
    rid = stores[0].rollouts.create(release, spec, "alice", 1.0)
    stores[0].deployments.record(rid, [Deploy("cam-1", "d-1", 0, 1)], 1.0)
    event = P.DeploymentEvent("d-1", P.DeploymentState.DOWNLOADING, 2)
    applied: list[bool] = []
    assert together(8, lambda i: applied.append(stores[i % 2].deployments.apply_event("cam-1", event, 2.0))) == []
    assert applied.count(True) == 1
    for store in stores:
        store.close()


def test_tokens_and_the_signing_key_in_the_store(store_url: str) -> None:
    a, b = Store(store_url), Store(store_url)
    keys: list[bytes] = []
    assert together(6, lambda i: keys.append((a, b)[i % 2].settings.signing_key())) == []
    assert len(set(keys)) == 1 and len(keys[0]) == 32  # the first process to ask made it; all share it
    a.tokens.create("ci", Role.OPERATOR, hash_secret("x" * 40), None, "admin", 1.0)
    with pytest.raises(ConflictError):
        b.tokens.create("ci", Role.VIEWER, hash_secret("y" * 40), None, "admin", 1.0)
    assert b.tokens.by_hash(hash_secret("x" * 40)) is not None and b.tokens.by_hash(hash_secret("z")) is None
    b.tokens.revoke("ci", "admin", 2.0)
    assert a.tokens.get("ci").revoked_at == 2.0
    with pytest.raises(ConflictError):
        a.tokens.revoke("ci", "admin", 3.0)
    a.close()
    b.close()


def test_pure_access_rules() -> None:
    assert required_role("GET", "/healthz") is None and required_role("GET", "/metrics") is Role.VIEWER
    assert required_role("GET", "/metrics", public_metrics=True) is None
    assert required_role("GET", "/api/v1/tokens") is Role.ADMIN
    assert required_role("POST", "/api/v1/devices/admission/accept") is Role.ADMIN
    assert required_role("POST", "/api/v1/rollouts") is Role.OPERATOR
    assert required_role("GET", "/artifacts/x.efb") is Role.VIEWER
    assert Role.ADMIN.allows(Role.OPERATOR) and not Role.VIEWER.allows(Role.OPERATOR)
    assert parse_duration("30d") == 30 * 86400 and parse_duration("90s") == 90
    for bad in ("0d", "1y", "-1h", "", "1e9d"):
        with pytest.raises(InvalidRequestError):
            parse_duration(bad)
    signer = UrlSigner(b"k" * 32, ttl_s=60)
    params = dict(p.split("=") for p in signer.query("a" * 64, "d1", "cam-1", 1000.0).split("&"))
    assert signer.check("a" * 64, params, 1059.0) is None
    assert signer.check("a" * 64, params, 1061.0) == "url-expired"
    assert signer.check("b" * 64, params, 1000.0) == "bad-signature"
    assert signer.check("a" * 64, {**params, "exp": "99999999"}, 1000.0) == "bad-signature"
    assert signer.check("a" * 64, {"sig": "x"}, 1000.0) == "bad-signature"


def test_refused_calls_are_audited_up_to_a_rate_per_address(tmp_path: Path) -> None:
    store, now = Store.sqlite(tmp_path / "f.db"), [600.0]
    auth = Authenticator.of(store, {"b" * 20: "boot"}, UrlSigner(b"k" * 32), lambda: now[0])
    scope = {"method": "GET", "path": "/api/v1/devices"}
    for i in range(AUDITED_REFUSALS + 5):
        with pytest.raises(AuthError):
            auth.authorize(Role.VIEWER, scope, {"authorization": f"Bearer wrong-{i}"}, "10.0.0.9")
    assert (len(store.audit.log(limit=1000)), auth.unaudited) == (AUDITED_REFUSALS, 5)
    with pytest.raises(AuthError):  # another address is audited
        auth.authorize(Role.VIEWER, scope, {}, "10.0.0.10")
    now[0] += 60  # a new minute
    with pytest.raises(AuthError):
        auth.authorize(Role.VIEWER, scope, {}, "10.0.0.9")
    rows = store.audit.log(limit=1000)
    assert len(rows) == AUDITED_REFUSALS + 2 and rows[0].source == "10.0.0.9" and rows[0].action == "auth.unauthorized"
    assert auth.authorize(Role.ADMIN, scope, {"authorization": "Bearer " + "b" * 20}, "10.0.0.9") is not None
    store.close()


def test_concurrent_adds_of_one_release_store_it_once(store_url: str) -> None:
    stores = [Store(store_url), Store(store_url)]
    outcomes: list[str] = []

    def add(i: int) -> None:
        try:
            release_row(stores[i % 2], "3.0.0")
            outcomes.append("added")
        except ConflictError:
            outcomes.append("conflict")

    assert together(8, add) == []
    assert sorted(outcomes) == ["added"] + ["conflict"] * 7
    assert len(stores[0].audit.log(limit=100)) == 1
    for store in stores:
        store.close()
