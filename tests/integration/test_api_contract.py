"""The REST contract without workers: status codes, JSON errors, and bad input that writes nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import ControlPlane


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("api") / "home", submit_rate=2.0, submit_burst=30.0).start()
    yield plane
    plane.stop()


@pytest.fixture
def c(cp: ControlPlane) -> Iterator[httpx.Client]:
    with cp.client() as client:
        yield client


def count_jobs(c: httpx.Client) -> int:
    return len(c.get("/v1/jobs", params={"limit": 1000}).json()["jobs"])


def error_of(r: httpx.Response) -> dict[str, Any]:
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"code", "message", "details"} and err["message"]
    return err


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"command": []}, {"command"}),
        (
            {"command": ["x"], "resources": {"memory": "lots", "cpu": -2}},
            {"resources.memory", "resources.cpu"},
        ),
        ({"command": ["x"], "resources": {"gpu": 100000}}, {"resources.gpu"}),
        ({"command": ["x"], "priority": "whenever"}, {"priority"}),
        ({"command": ["x"], "unknown_field": True}, {"unknown_field"}),
        ({"command": ["x"], "replicas": 0}, {"replicas"}),
        ({"command": ["x"], "replicas": 2000}, {"replicas"}),
        ({"command": ["x"], "max_runtime": "3d"}, {"max_runtime"}),
    ],
)
def test_invalid_specs_get_field_errors_and_write_nothing(
    c: httpx.Client, body: dict[str, Any], fields: set[str]
) -> None:
    before = count_jobs(c)
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 422
    err = error_of(r)
    assert {d["field"] for d in err["details"]} == fields
    assert count_jobs(c) == before


def test_malformed_json_oversized_body_and_non_object(c: httpx.Client) -> None:
    before = count_jobs(c)
    r = c.post("/v1/jobs", content=b'{"command": ["x"', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_json"
    r = c.post("/v1/jobs", content=b"[1, 2]")
    assert r.status_code == 422
    big = json.dumps({"command": ["echo", "x" * (2 << 20)]}).encode()
    r = c.post("/v1/jobs", content=big)
    assert r.status_code == 413 and error_of(r)["code"] == "payload_too_large"
    assert count_jobs(c) == before


def test_auth_is_required(cp: ControlPlane) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        r = httpx.get(f"{cp.url}/v1/jobs", headers=headers)
        assert r.status_code == 401 and error_of(r)["code"] == "unauthenticated"
    r = httpx.post(f"{cp.url}/v1/jobs", json={"command": ["true"]})
    assert r.status_code == 401


def test_unknown_ids_are_404(c: httpx.Client) -> None:
    for method, path in (
        ("GET", "/v1/jobs/jnope"),
        ("DELETE", "/v1/jobs/jnope"),
        ("POST", "/v1/jobs/jnope/restart"),
        ("GET", "/v1/jobs/jnope/logs"),
        ("GET", "/v1/jobs/jnope/artifacts"),
        ("GET", "/v1/jobs/jnope/events"),
    ):
        r = c.request(method, path)
        assert r.status_code == 404, (method, path)
        assert error_of(r)["code"] == "not_found"


def test_idempotency_key(c: httpx.Client) -> None:
    body = {"command": ["echo", "once"], "pool": "none-such"}
    a = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-123"})
    b = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-123"})
    assert a.status_code == 201 and b.status_code == 200 and a.json()["id"] == b.json()["id"]
    other = c.post("/v1/jobs", json={**body, "name": "else"}, headers={"Idempotency-Key": "k-123"})
    assert other.status_code == 409 and error_of(other)["code"] == "idempotency_conflict"


def test_restart_of_unfinished_job_is_409_and_cancel_is_idempotent(c: httpx.Client) -> None:
    job = c.post("/v1/jobs", json={"command": ["true"], "pool": "none-such"}).json()
    assert _wait_reason(c, job["id"]) == "no schedulable workers are registered"
    assert c.post(f"/v1/jobs/{job['id']}/restart").status_code == 409
    first = c.delete(f"/v1/jobs/{job['id']}")
    again = c.delete(f"/v1/jobs/{job['id']}")
    assert first.status_code == again.status_code == 202 and again.json()["status"] == "CANCELLED"
    assert c.post(f"/v1/jobs/{job['id']}/restart").status_code == 202


def _wait_reason(c: httpx.Client, job_id: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reason = c.get(f"/v1/jobs/{job_id}").json()["pending_reason"]
        if reason:
            return str(reason)
        time.sleep(0.05)
    raise AssertionError("no pending reason")


def test_list_filters_and_cursor(c: httpx.Client) -> None:
    ids = [
        c.post("/v1/jobs", json={"command": ["true"], "name": "pager", "pool": "none-such"}).json()["id"]
        for _ in range(5)
    ]
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"name": "pager", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = c.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    assert c.get("/v1/jobs", params={"status": "BOGUS"}).status_code == 422
    assert c.get("/v1/jobs", params={"cursor": "%%%"}).status_code == 422


def test_all_events_stream(c: httpx.Client, cp: ControlPlane) -> None:
    # Submitted first, then read from the start of the log (after=0): no race with the subscription.
    job = c.post("/v1/jobs", json={"command": ["true"], "pool": "none-such"}).json()
    got: list[dict[str, Any]] = []

    def listen() -> None:
        with cp.client() as lc, lc.stream("GET", "/v1/events", params={"after": 0}, timeout=20) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    if event["job_id"] == job["id"]:
                        got.append(event)
                        return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    t.join(10)
    assert got and got[0]["job_id"] == job["id"] and got[0]["type"] == "submitted"


def test_openapi_health_metrics(c: httpx.Client, cp: ControlPlane) -> None:
    spec = httpx.get(f"{cp.url}/openapi.json").json()
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/logs",
        "/v1/jobs/{job_id}/artifacts",
        "/v1/workers",
        "/v1/queues",
        "/v1/pools/demand",
        "/v1/events",
    ):
        assert path in spec["paths"]
    submit = spec["paths"]["/v1/jobs"]["post"]
    assert (
        submit["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        == "#/components/schemas/JobSpec"
    )
    assert "resources" in spec["components"]["schemas"]["JobSpec"]["properties"]
    assert any(prm["name"] == "Idempotency-Key" for prm in submit["parameters"])
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert httpx.get(f"{cp.url}/healthz").json() == {"status": "ok", "leader": True}
    assert httpx.get(f"{cp.url}/readyz").status_code == 200
    assert "trainyard_http_requests_total" in c.get("/metrics").text


def test_presigned_urls_refuse_tampering_and_expiry(cp: ControlPlane, tmp_path: Path) -> None:
    from trainyard.objects.local import LocalObjectStore
    from trainyard.server.settings import url_secret

    store = LocalObjectStore(cp.settings.objects_dir, url_secret(cp.home), cp.url)
    store.put("jobs/x/1/artifacts/a.txt", b"secret bytes")
    good = store.presign("jobs/x/1/artifacts/a.txt", "GET")
    assert httpx.get(good).content == b"secret bytes"
    assert httpx.get(good.replace("a.txt", "b.txt")).status_code == 403
    assert httpx.get(good[:-4] + "0000").status_code == 403
    assert httpx.put(good, content=b"overwrite").status_code == 403
    expired = LocalObjectStore(cp.settings.objects_dir, url_secret(cp.home), cp.url, clock=lambda: 0.0)
    assert httpx.get(expired.presign("jobs/x/1/artifacts/a.txt", "GET", 60)).status_code == 403


def test_submission_rate_limit(cp: ControlPlane, c: httpx.Client) -> None:
    token = c.post("/v1/admin/users", json={"name": "burst", "team": "rl"}).json()["token"]
    with cp.client(token) as u:
        codes = [u.post("/v1/jobs", json={"command": ["true"], "pool": "none-such"}) for _ in range(40)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited and int(limited[0].headers["Retry-After"]) >= 1
    assert sum(r.status_code == 201 for r in codes) <= 32


def test_teams_weight_and_quotas(cp: ControlPlane, c: httpx.Client) -> None:
    r = c.put("/v1/admin/teams/vision", json={"weight": 2, "gpu_quota": 16, "gpu_type_quotas": {"a100": 8}})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "name": "vision",
        "weight": 2.0,
        "quotas": {"cpu": None, "memory": None, "gpu": 16, "gpu_by_type": {"a100": 8}},
        "monthly_budget": None,
    }
    # Only what is sent changes; null removes a limit.
    r = c.put("/v1/admin/teams/vision", json={"memory_quota": "64Gi", "gpu_quota": None})
    assert r.json()["quotas"] == {"cpu": None, "memory": 64 << 30, "gpu": None, "gpu_by_type": {"a100": 8}}
    assert r.json()["weight"] == 2.0
    teams = {t["name"]: t for t in c.get("/v1/teams").json()["teams"]}
    assert teams["vision"]["quotas"]["memory"] == 64 << 30
    # Bad input: a clear error, nothing written.
    for body, field in (
        ({"weight": 0}, "weight"),
        ({"gpu_quota": -1}, "gpu_quota"),
        ({"memory_quota": "lots"}, "memory_quota"),
        ({"gpu_type_quotas": {"A 100": 1}}, "gpu_type_quotas"),
        ({"colour": "red"}, "colour"),
    ):
        bad = c.put("/v1/admin/teams/vision", json=body)
        assert bad.status_code == 422, (body, bad.text)
        assert bad.json()["error"]["details"][0]["field"].startswith(field), bad.json()
    assert c.put("/v1/admin/teams/Bad Name", json={}).status_code == 422
    after = {t["name"]: t for t in c.get("/v1/teams").json()["teams"]}["vision"]
    assert after == teams["vision"]
    user = c.post("/v1/admin/users", json={"name": "quinn", "team": "vision"}).json()["token"]
    with cp.client(user) as cu:
        assert cu.put("/v1/admin/teams/vision", json={"weight": 9}).status_code == 403
        assert any(t["name"] == "vision" for t in cu.get("/v1/teams").json()["teams"])
