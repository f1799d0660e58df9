"""Budgets and usage on the real platform (one agent running real jobs), through REST and `yard`:
prices set by an admin, the cost of the work that ran, reports scoped to the caller's team, bad
input answered 4xx with the usual error body, a team over its monthly budget whose new job waits
with the reason that says so until an admin lets it through, and the metric and audit entries."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from tests.harness import ControlPlane, platform, wait_for, wait_status
from trainyard.cli.main import State, app

DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with platform(tmp_path_factory.mktemp("budgets"), agents=1) as (cp, _):
        yield cp


def user(admin: httpx.Client, name: str, team: str, role: str = "user") -> str:
    r = admin.post("/v1/admin/users", json={"name": name, "team": team, "role": role})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def yard(cp: ControlPlane, token: str, *args: str) -> Result:
    res = CliRunner().invoke(app, list(args), obj=State(url=cp.url, token=token))
    return res


def submit(c: httpx.Client, seconds: float) -> str:
    code = f"import time; time.sleep({seconds})"
    r = c.post(
        "/v1/jobs",
        json={"command": [sys.executable, "-c", code], "resources": {"cpu": 0.1, "memory": "32Mi"}},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()["error"]
    assert set(body) == {"code", "message", "details"}
    return body


def test_usage_prices_budget_hold_and_override(cp: ControlPlane) -> None:
    with cp.client() as admin:
        alice_token = user(admin, "alice", "vision")
        bob_token = user(admin, "bob", "nlp")
        root = cp.token
        # $3,600 a core-hour: a tenth of a core costs 10 cents a second, enough to see.
        res = yard(
            cp,
            root,
            "admin",
            "prices",
            "set",
            "--cpu",
            "3600",
            "--gpu",
            "a100=2.48",
            "--spot-discount",
            "60%",
        )
        assert res.exit_code == 0, res.output
        assert "$3600" in res.output and "60%" in res.output
        shown = json.loads(yard(cp, root, "admin", "prices", "show", "-o", "json").output)
        assert shown["prices"]["cpu_hour"] == "3600" and shown["updated_by"] == "admin"

        with cp.client(alice_token) as alice, cp.client(bob_token) as bob:
            first = submit(alice, 1.0)
            wait_status(alice, first, DONE, 60)
            report = alice.get("/v1/usage", params={"by": "user,gpu-type", "since": "1d"})
            assert report.status_code == 200, report.text
            body = report.json()
            assert body["team"] == "vision" and body["by"] == ["user", "gpu-type"] and body["prices_set"]
            [line] = body["groups"]
            assert (line["user"], line["gpu-type"], line["attempts"]) == ("alice", "none", 1)
            assert line["cost_micros"] > 50_000  # at least half a second of it
            assert line["cost_micros"] == body["total"]["cost_micros"]

            # Scoped: bob sees his team's (nothing), not alice's; an admin sees any team, or all.
            assert bob.get("/v1/usage").json()["groups"] == []
            assert error(bob.get("/v1/usage", params={"team": "vision"}), 403)["code"] == "forbidden"
            assert admin.get("/v1/usage", params={"team": "vision"}).json()["total"]["attempts"] == 1
            everyone = admin.get("/v1/usage", params={"by": "team"}).json()
            assert everyone["team"] is None and [g["team"] for g in everyone["groups"]] == ["vision"]

            # Bad input: 4xx with the usual body, naming the field.
            for params, field in (
                ({"by": "colour"}, "by"),
                ({"by": "user,user"}, "by"),
                ({"since": "yesterday"}, "since"),
                ({"since": "9999d"}, "since"),
                ({"team": "../x"}, "team"),
            ):
                details = error(alice.get("/v1/usage", params=params), 422)["details"]
                assert details[0]["field"] == field, (params, details)
            error(alice.get("/v1/usage", params={"since": "1" * 100}), 422)
            error(alice.put("/v1/admin/prices", json={"cpu_hour": 1}), 403)
            error(admin.put("/v1/admin/prices", json={"cpu_hour": "-1"}), 422)
            error(admin.put("/v1/admin/prices", json={"colour": 1}), 422)
            error(
                admin.put("/v1/admin/prices", content=b"{", headers={"Content-Type": "application/json"}), 400
            )
            error(admin.put("/v1/admin/teams/vision", json={"monthly_budget": "5000/week"}), 422)
            error(alice.post(f"/v1/admin/jobs/{first}/allow-over-budget"), 403)
            error(admin.post("/v1/admin/jobs/j0nope/allow-over-budget"), 404)
            assert admin.get("/v1/prices").json()["prices"]["cpu_hour"] == "3600"

            # A budget already spent: the team's new job waits, with the reason.
            res = yard(cp, root, "admin", "team", "set", "vision", "--budget", "0.05/month")
            assert res.exit_code == 0, res.output
            assert "$0.05/month" in res.output
            held = submit(alice, 0.1)

            def reason() -> str | None:
                r = alice.get(f"/v1/jobs/{held}").json()
                text = r.get("pending_reason") or ""
                return text if "over its monthly budget" in text else None

            text = wait_for(reason, 30, 0.1, "the over-budget reason")
            assert text.startswith("team vision is over its monthly budget ($0.") and text.endswith(
                " of $0.05)"
            )
            assert alice.get(f"/v1/jobs/{held}").json()["status"] == "PENDING"
            # Another team is not held.
            wait_status(bob, submit(bob, 0.1), DONE, 60)

            res = yard(cp, root, "admin", "jobs", "allow-over-budget", held)
            assert res.exit_code == 0, res.output
            assert wait_status(alice, held, DONE, 60)["status"] == "SUCCEEDED"

            res = yard(cp, alice_token, "usage", "--by", "user", "--since", "1d", "--json")
            assert res.exit_code == 0, res.output
            mine = json.loads(res.output)
            assert mine["groups"][0]["attempts"] == 2
            assert mine["budgets"][0]["level"] == "over" and mine["budgets"][0]["monthly_budget"] == "0.05"
            table = yard(cp, alice_token, "usage", "--by", "user,gpu-type", "--since", "30d").output
            assert "alice" in table and "GPU-HOURS" in table and "budget of team vision" in table
            bad = yard(cp, alice_token, "usage", "--by", "colour")
            assert bad.exit_code == 1 and "cannot group by" in bad.output

            metrics = admin.get("/metrics").text
            assert 'trainyard_team_budget_used_ratio{team="vision"}' in metrics
            assert 'trainyard_team_budget_alerts_total{percent="100",team="vision"} 1.0' in metrics
            actions = {
                e["action"] for e in admin.get("/v1/admin/audit", params={"team": "vision"}).json()["entries"]
            }
            assert {"budget.warning", "budget.exceeded", "job.allow-over-budget", "team.set"} <= actions

            res = yard(cp, root, "admin", "team", "set", "vision", "--budget", "none")
            assert res.exit_code == 0 and "-" in res.output
            teams = {t["name"]: t for t in admin.get("/v1/teams").json()["teams"]}
            assert teams["vision"]["monthly_budget"] is None
            wait_status(alice, submit(alice, 0.1), DONE, 60)
