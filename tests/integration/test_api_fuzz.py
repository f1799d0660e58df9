"""schemathesis against the live OpenAPI document of a real control plane.

Every documented operation is called with generated valid and invalid input, authenticated as the
admin (so the fuzzer reaches the handlers, not only the 401 path). A response fails the test when it
is a 5xx, carries a status code its operation does not document, or has a body or content type that
breaks what the document says for that status.

Left out, and why:
- ``GET /v1/events`` is an SSE stream that never ends on its own: a call would hang, not fail.
- ``follow=true`` on ``/v1/jobs/{id}/events`` and ``/v1/jobs/{id}/logs`` streams until the job
  ends; those operations are fuzzed with ``follow=false`` pinned.
- ``/objects/{key}`` (presigned GET/PUT) is not in the OpenAPI document: it is reached only through
  signed URLs, and its signature checks have their own tests (test_api_contract.py).

The schema is loaded in a fixture (the server starts there) and each operation runs its own
Hypothesis test through ``APIOperation.as_strategy``: schemathesis' lazy ``from_fixture`` pytest
integration does not run under pytest 9 (it reads the removed ``Node._nodeid``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.harness import ControlPlane

# POST /v1/workdirs takes a tar.gz: sent as raw bytes (the handler refuses all but gzip with 422).
schemathesis.serializer.alias("application/gzip", "application/octet-stream")

# Examples per operation and generation mode (valid and invalid input): a few dozen per operation
# keep the whole file to a couple of minutes on two cores.
# TRAINYARD_FUZZ_EXAMPLES raises it for a deeper run by hand.
EXAMPLES = int(os.environ.get("TRAINYARD_FUZZ_EXAMPLES", "30"))
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]
NOT_FUZZED = {"GET /v1/events"}
PINNED_QUERY: dict[str, dict[str, Any]] = {
    "GET /v1/jobs/{job_id}/events": {"follow": False},
    "GET /v1/jobs/{job_id}/logs": {"follow": False},
}
OPERATIONS = [
    "POST /v1/jobs",
    "GET /v1/jobs",
    "GET /v1/jobs/{job_id}",
    "DELETE /v1/jobs/{job_id}",
    "POST /v1/jobs/{job_id}/restart",
    "GET /v1/jobs/{job_id}/events",
    "GET /v1/jobs/{job_id}/logs",
    "GET /v1/jobs/{job_id}/artifacts",
    "GET /v1/jobs/{job_id}/artifacts/{path}",
    "GET /v1/jobs/{job_id}/metrics",
    "POST /v1/workdirs",
    "GET /v1/workers",
    "GET /v1/queues",
    "POST /v1/admin/workers/{worker}/drain",
    "GET /v1/teams",
    "PUT /v1/admin/teams/{name}",
    "POST /v1/admin/users",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "POST /v1/admin/tokens",
    "GET /v1/admin/tokens",
    "DELETE /v1/admin/tokens/{token_id}",
    "GET /v1/admin/audit",
    "PUT /v1/secrets/{name}",
    "DELETE /v1/secrets/{name}",
    "GET /v1/secrets",
]


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("fuzz") / "home").start()
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def job_id(cp: ControlPlane) -> str:
    # A real (pending: there are no workers) job, so job routes are fuzzed past their 404.
    with cp.client() as c:
        r = c.post("/v1/jobs", json={"command": ["true"], "pool": "none-such"})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


@pytest.fixture(scope="module")
def api(cp: ControlPlane) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{cp.url}/openapi.json")


def test_every_operation_is_fuzzed(api: schemathesis.BaseSchema) -> None:
    # A new route joins OPERATIONS (or NOT_FUZZED, with its reason in the docstring).
    live = {f"{op.ok().method.upper()} {op.ok().path}" for op in api.get_all_operations()}
    assert live == set(OPERATIONS) | NOT_FUZZED


@pytest.mark.parametrize("label", OPERATIONS)
def test_operation_conforms_to_its_openapi(
    label: str, api: schemathesis.BaseSchema, cp: ControlPlane, job_id: str
) -> None:
    operation = api.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the live OpenAPI document"
    query = PINNED_QUERY.get(label)
    paths: list[dict[str, Any] | None] = [None]
    if "{job_id}" in label:
        paths.append({"job_id": job_id})
    cases = st.one_of(
        [
            operation.as_strategy(mode, query=query, path_parameters=path)
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
            for path in paths
        ]
    )
    headers = {"Authorization": f"Bearer {cp.token}"}

    @hypothesis.settings(
        max_examples=2 * EXAMPLES,
        deadline=None,
        database=None,
        derandomize="TRAINYARD_FUZZ_EXAMPLES" not in os.environ,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=cases)
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=cp.url, headers=headers, checks=CHECKS, timeout=30)

    fuzz()
