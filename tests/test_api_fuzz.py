"""Fuzz the live API from its own OpenAPI document (schemathesis), with a token: no server error, every
status and body as the document declares (bounded: a fixed number of examples per operation, derandomized,
so a run takes well under a minute and fails the same way twice)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import checks

from device_agent.bundle import PrivateKey
from fleet.broker import start_local_broker
from tests.support.fleet_harness import TOKEN, running_fleet

EXAMPLES = 15  # per operation
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def fleet_url(tmp_path_factory: pytest.TempPathFactory, release_key: PrivateKey) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fuzz")
    _, pub = release_key.save(tmp / "keys" / "release")
    with start_local_broker(workdir=tmp / "broker") as broker, running_fleet(broker.url, tmp, pub) as h:
        yield h.url


def test_the_api_conforms_to_its_openapi_document_under_fuzzing(fleet_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{fleet_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)

        fuzz()


def test_the_document_declares_the_security_scheme_and_every_error(fleet_url: str) -> None:
    doc = httpx.get(f"{fleet_url}/openapi.json").json()
    assert doc["components"]["securitySchemes"] == {"HTTPBearer": {"type": "http", "scheme": "bearer"}}
    start = doc["paths"]["/api/v1/rollouts"]["post"]
    assert start["security"] == [{"HTTPBearer": []}]
    assert {"400", "401", "403", "404", "409", "413", "422"} <= set(start["responses"])
    error = doc["components"]["schemas"]["ErrorOut"]
    assert set(error["required"]) == {"error", "code"}
    assert "security" not in doc["paths"]["/healthz"]["get"]
