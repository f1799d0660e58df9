"""Log search on the real platform: a job's sealed output becomes searchable on its own (the
leader's indexer), masked as its log is; other teams never see it; hostile queries are 4xx; and
`yard logs search` prints it."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tests.harness import ControlPlane, platform, wait_for, wait_status
from trainyard.cli.app import State
from trainyard.cli.main import app

DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
SECRET = "sk-live-fedcba9876543210"
PRINT = (
    "import os\n"
    "print('epoch 1 loss 0.31', flush=True)\n"
    "print('RuntimeError: CUDA out of memory. key', os.environ['API_KEY'], flush=True)\n"
)


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with platform(tmp_path_factory.mktemp("logsearch"), agents=1) as (cp, _):
        yield cp


def user(admin: httpx.Client, name: str, team: str, role: str = "user") -> str:
    r = admin.post("/v1/admin/users", json={"name": name, "team": team, "role": role})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


@pytest.fixture(scope="module")
def oom_job(cp: ControlPlane) -> dict[str, Any]:
    """A vision job that ran out of memory, with a secret in the same line, and the tokens."""
    with cp.client() as admin:
        lead = user(admin, "vera", "vision", "team-admin")
        alice = user(admin, "alice", "vision")
        bob = user(admin, "bob", "nlp")
    with cp.client(lead) as lc:
        assert lc.put("/v1/secrets/API_KEY", json={"value": SECRET}).status_code == 200
    with cp.client(alice) as ac:
        spec = {"command": [sys.executable, "-c", PRINT], "secrets": ["API_KEY"]}
        r = ac.post("/v1/jobs", json={**spec, "resources": {"cpu": 0.1, "memory": "32Mi"}})
        assert r.status_code == 201, r.text
        job = wait_status(ac, r.json()["id"], DONE)
        assert job["status"] == "SUCCEEDED", job
    return {"id": job["id"], "alice": alice, "bob": bob}


def test_sealed_output_becomes_searchable_masked_as_its_log(
    cp: ControlPlane, oom_job: dict[str, Any]
) -> None:
    with cp.client(oom_job["alice"]) as ac:

        def hits() -> list[dict[str, Any]]:
            r = ac.get("/v1/logs/search", params={"q": "CUDA out of memory", "since": "1h"})
            assert r.status_code == 200, r.text
            return list(r.json()["hits"])

        found = wait_for(hits, 30, 0.2, "the job's line in the search index")
        assert [h["job_id"] for h in found] == [oom_job["id"]]
        line = found[0]["line"]
        assert SECRET not in line and line == "RuntimeError: CUDA out of memory. key ***"
        log = ac.get(f"/v1/jobs/{oom_job['id']}/logs").content
        assert log[found[0]["offset"] :].startswith(line.encode())
        assert found[0]["team"] == "vision" and found[0]["attempt"] == 1
        # The secret itself is not searchable: it was never indexed.
        assert ac.get("/v1/logs/search", params={"q": SECRET}).json()["hits"] == []


def test_another_team_never_sees_the_lines(cp: ControlPlane, oom_job: dict[str, Any]) -> None:
    with cp.client(oom_job["alice"]) as ac:
        wait_for(lambda: ac.get("/v1/logs/search", params={"q": "loss"}).json()["hits"], 30, 0.2, "indexing")
    with cp.client(oom_job["bob"]) as bc:
        for params in (
            {"q": "CUDA out of memory"},
            {"q": "CUDA out of memory", "team": "vision"},
            {"q": "epoch", "job": oom_job["id"]},
        ):
            r = bc.get("/v1/logs/search", params=params)
            assert r.status_code == 200 and r.json()["hits"] == [], (params, r.text)
    with cp.client() as admin:
        r = admin.get("/v1/logs/search", params={"q": "cuda out of memory", "team": "vision"})
        assert [h["job_id"] for h in r.json()["hits"]] == [oom_job["id"]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"q": '"'}, "q"),
        ({"q": ""}, "q"),
        ({"q": "AND"}, None),
        ({"q": 'NEAR("a" b*) OR -c'}, None),
        ({"q": "x", "since": "yesterday"}, "since"),
        ({"q": "x", "since": "-1d"}, "since"),
        ({"q": "x", "limit": 100000}, "limit"),
        ({"q": "x", "limit": 0}, "limit"),
        ({"q": "x", "cursor": "l1' OR 1=1"}, "cursor"),
        ({"q": "x" * 5000}, "q"),
        ({}, "q"),
    ],
)
def test_hostile_searches_are_4xx_or_plain_words(
    cp: ControlPlane, oom_job: dict[str, Any], params: dict[str, Any], field: str | None
) -> None:
    with cp.client(oom_job["alice"]) as ac:
        r = ac.get("/v1/logs/search", params=params)
    if field is None:  # operators are words like any other
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 422, r.text
    body = r.json()["error"]
    assert any(field in json.dumps(d) for d in body.get("details") or [body]), body


def test_yard_logs_search(cp: ControlPlane, oom_job: dict[str, Any]) -> None:
    state = State(url=cp.url, token=oom_job["alice"])
    args = ["logs", "search", "CUDA out of memory", "--since", "1d", "--team", "vision", "--limit", "5"]
    res = wait_for(
        lambda: (r := CliRunner().invoke(app, args, obj=state)).exit_code == 0 and "CUDA" in r.stdout and r,
        30,
        0.2,
        "yard logs search to print the line",
    )
    assert res.stdout.startswith(f"{oom_job['id']}/1 ") and res.stdout.rstrip().endswith("key ***")
    res = CliRunner().invoke(app, [*args, "--json"], obj=state)
    assert res.exit_code == 0 and json.loads(res.stdout)["hits"][0]["job_id"] == oom_job["id"]
    bad = CliRunner().invoke(app, ["logs", "search", '"'], obj=state)
    assert bad.exit_code == 1 and "word" in bad.stderr
    # The job's own log command is unchanged, and refuses stray arguments.
    assert CliRunner().invoke(app, ["logs", oom_job["id"]], obj=state).stdout.startswith("epoch 1")
    assert CliRunner().invoke(app, ["logs", oom_job["id"], "extra"], obj=state).exit_code == 2


def test_log_search_on_postgres(tmp_path: Path, pg_url: str) -> None:
    """The same path with PostgreSQL's full-text search behind it."""
    with platform(tmp_path, agents=1, database_url=pg_url) as (pg, _), pg.client() as admin:
        alice, bob = user(admin, "alice", "vision"), user(admin, "bob", "nlp")
        log = "print('warmup'); print('RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB')"
        with pg.client(alice) as ac:
            r = ac.post("/v1/jobs", json={"command": [sys.executable, "-c", log], "resources": {"cpu": 0.1}})
            assert r.status_code == 201, r.text
            assert wait_status(ac, r.json()["id"], DONE)["status"] == "SUCCEEDED"

            def hits() -> list[dict[str, Any]]:
                return list(
                    ac.get("/v1/logs/search", params={"q": "memory tried to allocate 2"}).json()["hits"]
                )

            found = wait_for(hits, 30, 0.2, "the line in PostgreSQL's index")
            assert found[0]["line"].startswith("RuntimeError: CUDA") and found[0]["job_id"] == r.json()["id"]
            assert ac.get("/v1/logs/search", params={"q": '" ( -'}).status_code == 422
            assert ac.get("/v1/logs/search", params={"q": "NOT (cuda"}).json()["hits"] == []
        with pg.client(bob) as bc:
            assert (
                bc.get("/v1/logs/search", params={"q": "CUDA out of memory", "team": "vision"}).json()["hits"]
                == []
            )
