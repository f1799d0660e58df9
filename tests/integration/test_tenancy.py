"""Tenancy on the real platform: roles, tokens that expire and are revoked, the audit trail, and
team secrets that reach only the job (as environment) and never its log, the API or the database."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import ControlPlane, platform, wait_for, wait_status

DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
SECRET = "sk-live-0123456789abcdef"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with platform(tmp_path_factory.mktemp("tenancy"), agents=1) as (cp, _):
        yield cp


def user(admin: httpx.Client, name: str, team: str, role: str) -> str:
    r = admin.post("/v1/admin/users", json={"name": name, "team": team, "role": role})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def submit(c: httpx.Client, command: list[str], **spec: object) -> httpx.Response:
    return c.post("/v1/jobs", json={"command": command, "resources": {"cpu": 0.1, "memory": "32Mi"}, **spec})


def test_roles(cp: ControlPlane) -> None:
    with cp.client() as admin:
        lead = user(admin, "lena", "vision", "team-admin")
        with cp.client(lead) as lc:
            # A team admin adds people to their own team only, up to team-admin.
            viewer = lc.post("/v1/admin/users", json={"name": "vic", "team": "vision", "role": "viewer"})
            assert viewer.status_code == 201, viewer.text
            ann = lc.post("/v1/admin/users", json={"name": "ann", "team": "vision", "role": "user"}).json()[
                "token"
            ]
            assert lc.post("/v1/admin/users", json={"name": "x", "team": "nlp"}).status_code == 403
            assert (
                lc.post("/v1/admin/users", json={"name": "y", "team": "vision", "role": "admin"}).status_code
                == 403
            )
            bob = user(admin, "bob", "nlp", "user")
            assert lc.post("/v1/admin/users", json={"name": "bob", "team": "vision"}).status_code == 403
        with cp.client(viewer.json()["token"]) as vc, cp.client(ann) as ac, cp.client(lead) as lc:
            r = submit(ac, ["sleep", "60"])
            assert r.status_code == 201, r.text
            job = r.json()["id"]
            # Viewers read their team's jobs and change nothing.
            assert vc.get(f"/v1/jobs/{job}").status_code == 200
            assert submit(vc, ["true"]).status_code == 403
            assert vc.delete(f"/v1/jobs/{job}").status_code == 403
            assert vc.get(f"/v1/jobs/{job}").json()["status"] in {"PENDING", "SCHEDULED", "RUNNING"}
            with cp.client(bob) as bc:
                assert bc.get(f"/v1/jobs/{job}").status_code == 404  # another team's job is not there
            # The team admin cancels and restarts a teammate's job.
            assert lc.delete(f"/v1/jobs/{job}").status_code == 202
            wait_status(ac, job, DONE)
            assert lc.post(f"/v1/jobs/{job}/restart").status_code == 202
            assert lc.delete(f"/v1/jobs/{job}").status_code == 202
            wait_status(ac, job, DONE)
        with cp.client() as admin:
            trail = admin.get("/v1/admin/audit", params={"team": "vision"}).json()["entries"]
            seen = [(e["actor"], e["action"], e["target"]) for e in trail]
            assert ("lena", "job.cancel", job) in seen and ("lena", "job.restart", job) in seen, seen
            assert ("lena", "user.create", "vic") in seen, seen
            with cp.client(lead) as lc:
                own = lc.get("/v1/admin/audit").json()["entries"]
                assert own and all(e["team"] == "vision" for e in own)
                assert lc.get("/v1/admin/audit", params={"team": "nlp"}).status_code == 403
            with cp.client(ann) as ac:
                assert ac.get("/v1/admin/audit").status_code == 403


def test_tokens_expire_and_are_revoked(cp: ControlPlane) -> None:
    with cp.client() as admin:
        user(admin, "tom", "nlp", "user")
        short = admin.post("/v1/admin/tokens", json={"user": "tom", "expires_in": "2s", "description": "ci"})
        assert short.status_code == 201, short.text
        body = short.json()
        assert body["id"].startswith("tk_") and body["state"] == "active" and body["created_by"] == "admin"
        long = admin.post("/v1/admin/tokens", json={"user": "tom"}).json()
        with cp.client(body["token"]) as sc, cp.client(long["token"]) as lc:
            assert sc.get("/v1/jobs").status_code == 200
            # Expired after its 2 s, cached or not (the condition, not a sleep, is what is waited on).
            wait_for(lambda: sc.get("/v1/jobs").status_code == 401, 10, 0.1, "the short token to expire")
            assert lc.get("/v1/jobs").status_code == 200
            listed = {t["id"]: t for t in lc.get("/v1/admin/tokens").json()["tokens"]}
            assert listed[body["id"]]["state"] == "expired" and listed[long["id"]]["state"] == "active"
            assert all("token" not in t for t in listed.values())
            # A user revokes their own token; it stops working at once on this replica.
            assert lc.delete(f"/v1/admin/tokens/{long['id']}").status_code == 200
            assert lc.get("/v1/jobs").status_code == 401
        bad = admin.post("/v1/admin/tokens", json={"user": "tom", "expires_in": "soon"})
        assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "expires_in"
        assert admin.post("/v1/admin/tokens", json={"user": "nobody"}).status_code == 422
        assert admin.delete("/v1/admin/tokens/tk_000000000000").status_code == 404
        actions = {
            e["action"] for e in admin.get("/v1/admin/audit", params={"actor": "tom"}).json()["entries"]
        }
        assert "token.revoke" in actions


SHOW = (
    "import os, sys, hashlib\n"
    "v = os.environ['API_KEY']\n"
    "print('whole', v, flush=True)\n"
    "sys.stdout.write('split ' + v[:7]); sys.stdout.flush()\n"
    "import time; time.sleep(0.3)\n"
    "sys.stdout.write(v[7:] + ' end\\n'); sys.stdout.flush()\n"
    "print('sha', hashlib.sha256(v.encode()).hexdigest(), file=sys.stderr, flush=True)\n"
)


def test_secrets_reach_the_job_only(cp: ControlPlane) -> None:
    import hashlib

    with cp.client() as admin:
        lead = user(admin, "sam", "speech", "team-admin")
        member = user(admin, "sue", "speech", "user")
        with cp.client(member) as mc:
            assert mc.put("/v1/secrets/API_KEY", json={"value": SECRET}).status_code == 403
            r = submit(mc, [sys.executable, "-c", SHOW], secrets=["API_KEY"])
            assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "secrets"
        with cp.client(lead) as lc:
            assert lc.put("/v1/secrets/API_KEY", json={"value": SECRET}).status_code == 200
            assert lc.put("/v1/secrets/bad-name", json={"value": "x"}).status_code == 422
            assert lc.put("/v1/secrets/OK", json={"value": ""}).status_code == 422
        with cp.client(member) as mc:
            listed = mc.get("/v1/secrets").json()["secrets"]
            assert [s["name"] for s in listed] == ["API_KEY"] and SECRET not in str(listed)
            job = submit(mc, [sys.executable, "-c", SHOW], secrets=["API_KEY"]).json()
            done = wait_status(mc, job["id"], DONE)
            assert done["status"] == "SUCCEEDED", done
            log = mc.get(f"/v1/jobs/{job['id']}/logs").text
            assert SECRET not in log and "whole ***" in log and "split *** end" in log, log
            # The job saw the real value: its hash, printed, matches.
            assert hashlib.sha256(SECRET.encode()).hexdigest() in log
            assert SECRET not in mc.get(f"/v1/jobs/{job['id']}").text
            assert done["spec"]["secrets"] == ["API_KEY"]
            assert "API_KEY" not in (done["spec"].get("env") or {})
        with cp.client() as admin:
            assert (
                admin.get("/v1/secrets", params={"team": "speech"}).json()["secrets"][0]["updated_by"]
                == "sam"
            )
    # At rest it is ciphertext: the database file holds no trace of the value.
    db = b"".join(p.read_bytes() for p in cp.home.glob("trainyard.db*"))
    assert SECRET.encode() not in db
    with cp.client(lead) as lc:
        assert lc.delete("/v1/secrets/API_KEY").status_code == 204
        assert lc.delete("/v1/secrets/API_KEY").status_code == 404
        wait_for(lambda: lc.get("/v1/secrets").json()["secrets"] == [], 5)
