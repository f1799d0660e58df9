"""Retention through the REST API and the CLI on a real control plane: POST /v1/admin/prune archives
finished jobs; an archived job is still read by id (archived: true), by whoever may see it and by
nobody else; bad requests and non-admins change nothing."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import YARD, ControlPlane


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("retention") / "home").start()
    yield plane
    plane.stop()


def user(admin: httpx.Client, name: str, team: str) -> str:
    r = admin.post("/v1/admin/users", json={"name": name, "team": team, "role": "user"})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def cancelled_job(c: httpx.Client) -> str:
    r = c.post("/v1/jobs", json={"command": ["true"], "resources": {"cpu": 0.1, "memory": "32Mi"}})
    assert r.status_code == 201, r.text
    job_id = str(r.json()["id"])
    assert c.delete(f"/v1/jobs/{job_id}").json()["status"] == "CANCELLED"  # no worker: ends at once
    return job_id


def yard(cp: ControlPlane, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRAINYARD_URL": cp.url, "TRAINYARD_TOKEN": token or cp.token}
    return subprocess.run([*YARD, *args], env=env, capture_output=True, text=True, timeout=120)


def error_of(r: httpx.Response) -> dict[str, Any]:
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"code", "message", "details"} and err["message"]
    return err


def test_prune_archives_and_an_archived_job_reads_back_for_its_team_only(cp: ControlPlane) -> None:
    with cp.client() as admin:
        alice, bob = user(admin, "alice", "vision"), user(admin, "bob", "nlp")
        with cp.client(alice) as ac, cp.client(bob) as bc:
            done = [cancelled_job(ac), cancelled_job(ac)]
            live = ac.post("/v1/jobs", json={"command": ["true"], "resources": {"cpu": 0.1}}).json()["id"]
            views = {j: ac.get(f"/v1/jobs/{j}").json() for j in done}
            events = {j: ac.get(f"/v1/jobs/{j}/events").json()["events"] for j in done}
            assert all(v["archived"] is False for v in views.values())

            # Only admins prune; a team's user gets 403 and nothing changes.
            r = ac.post("/v1/admin/prune", json={"before": "0s"})
            assert r.status_code == 403 and error_of(r)["code"] == "forbidden"

            dry = admin.post("/v1/admin/prune", json={"before": "0s", "dry_run": True})
            assert dry.status_code == 200, dry.text
            assert (dry.json()["jobs"], dry.json()["objects"]) == (2, [])
            assert all(ac.get(f"/v1/jobs/{j}").json()["archived"] is False for j in done)

            r = admin.post("/v1/admin/prune", json={"before": "0s", "batch": 1})
            assert r.status_code == 200, r.text
            report = r.json()
            assert (report["jobs"], report["rows"], report["more"]) == (2, 2, False)
            assert len(report["objects"]) == 2 and all(k.startswith("archive/") for k in report["objects"])

            listed = {j["id"] for j in ac.get("/v1/jobs", params={"limit": 100}).json()["jobs"]}
            assert listed == {live}
            for job_id in done:
                got = ac.get(f"/v1/jobs/{job_id}")
                assert got.status_code == 200, got.text
                assert got.json() == {**views[job_id], "archived": True}
                assert admin.get(f"/v1/jobs/{job_id}").json()["archived"] is True
                # Another team's user cannot tell an archived job from one that never existed.
                assert bc.get(f"/v1/jobs/{job_id}").status_code == 404
                assert bc.get(f"/v1/jobs/{job_id}/events").status_code == 404
                assert ac.get(f"/v1/jobs/{job_id}/events").json()["events"] == events[job_id]
                # Finished long ago: a cancel leaves it as it was; a restart is refused.
                assert ac.delete(f"/v1/jobs/{job_id}").status_code == 202
                assert ac.post(f"/v1/jobs/{job_id}/restart").status_code == 409
            assert ac.get(f"/v1/jobs/{live}").json()["archived"] is False

            shown = yard(cp, "get", done[0], token=alice)
            assert shown.returncode == 0, shown.stderr
            assert "CANCELLED (archived)" in shown.stdout


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"before": ""},
        {"before": "soon"},
        {"before": "-3d"},
        {"before": "2999-01-01T00:00:00Z"},
        {"before": "2026-01-01T00:00:00"},
        {"before": "0s", "batch": 0},
        {"before": "0s", "dry_run": "yes"},
        {"before": "0s", "surprise": 1},
        {"before": ["90d"]},
    ],
)
def test_a_bad_prune_request_is_a_422_and_changes_nothing(cp: ControlPlane, body: dict[str, Any]) -> None:
    with cp.client() as admin:
        job_id = cancelled_job(admin)
        r = admin.post("/v1/admin/prune", json=body)
        assert r.status_code == 422, r.text
        assert error_of(r)["code"] == "invalid_request"
        assert admin.get(f"/v1/jobs/{job_id}").json()["archived"] is False


def test_yard_admin_prune(cp: ControlPlane) -> None:
    with cp.client() as admin:
        job_id = cancelled_job(admin)
    dry = yard(cp, "admin", "prune", "--before", "0s", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would archive" in dry.stdout
    real = yard(cp, "admin", "prune", "--before", "0s", "--batch", "50")
    assert real.returncode == 0, real.stderr
    assert real.stdout.startswith("archived ") and " 0 jobs" not in real.stdout
    bad = yard(cp, "admin", "prune", "--before", "whenever")
    assert bad.returncode != 0 and "before" in bad.stderr
    with cp.client() as admin:
        assert admin.get(f"/v1/jobs/{job_id}").json()["archived"] is True
