"""Job arrays and dependencies on the real platform: one request makes an array, its tasks run as
jobs of their own (capped by parallelism, retried alone, cancelled with their parent), and jobs wait
for others, start when they may, end when they never can, and fetch what those left behind."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.harness import REPO, ControlPlane, platform, wait_for, wait_status

PY = sys.executable
DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with platform(tmp_path_factory.mktemp("arrays"), agents=2, agent_args=("--cpus", "4")) as (cp, _):
        yield cp


@pytest.fixture
def c(cp: ControlPlane) -> Iterator[httpx.Client]:
    with cp.client() as client:
        yield client


def submit(c: httpx.Client, code: str, *args: str, **spec: Any) -> dict[str, Any]:
    body = {
        # No cwd: a job runs in its own directory, so what it fetches (dependency_artifacts()
        # writes ./dependencies/) never lands in the checkout.
        "command": [PY, "-c", code, *args],
        "resources": {"cpu": 0.5, "memory": "64Mi"},
        **spec,
    }
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    return job


def tasks(c: httpx.Client, array: str, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = c.get(f"/v1/jobs/{array}/tasks", params={**params, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        body = page.json()
        out.extend(body["tasks"])
        cursor = body["next_cursor"]
        if cursor is None:
            return out


def at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


SLEEPY = "import sys, time; time.sleep(float(sys.argv[1])); print('task', sys.argv[2])"


def test_an_array_runs_each_index_as_a_job_capped_by_parallelism(c: httpx.Client) -> None:
    array = submit(c, SLEEPY, "1.0", "{index}", array={"indices": "0-5", "parallelism": 2}, name="sweep")
    assert array["array"] == {
        "indices": "0-5",
        "parallelism": 2,
        "tasks": 6,
        "counts": {"PENDING": 6},
        "done": 0,
    }
    assert array["urls"]["tasks"] == f"/v1/jobs/{array['id']}/tasks"
    done = wait_status(c, array["id"], DONE, 90)
    assert done["status"] == "SUCCEEDED" and done["array"]["counts"] == {"SUCCEEDED": 6}, done
    listed = tasks(c, array["id"], limit=4)
    assert [t["index"] for t in listed] == list(range(6))
    # Never more than two at once: the attempts' running intervals overlap two deep at most.
    spans = []
    for t in listed:
        job = c.get(f"/v1/jobs/{t['id']}").json()
        assert job["array_id"] == array["id"] and job["array_index"] == t["index"]
        assert job["spec"]["command"][-1] == str(t["index"])  # '{index}' replaced
        (attempt,) = job["attempts"]
        spans.append((at(attempt["started_at"]), at(attempt["finished_at"])))
        assert f"task {t['index']}" in c.get(f"/v1/jobs/{t['id']}/logs").text
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    depth = peak = 0
    for _, step in edges:
        depth += step
        peak = max(peak, depth)
    assert peak <= 2, spans
    # The list shows the array once, with its counts; its tasks are not listed.
    page = c.get("/v1/jobs", params={"limit": 200}).json()["jobs"]
    ids = [j["id"] for j in page]
    assert array["id"] in ids and not any(i.startswith(f"{array['id']}-") for i in ids)


ENV = (
    "import os, sys, trainyard.job as tj\n"
    "i = os.environ['TRAINYARD_ARRAY_INDEX']\n"
    "assert tj.array_index() == int(i)\n"
    "print('array', os.environ['TRAINYARD_ARRAY_JOB_ID'], 'index', i, 'arg', sys.argv[1], flush=True)\n"
    "tj.log_metric('loss', 10.0 - int(i), step=0)\n"
    "tj.log_metric('loss', 5.0 - int(i), step=1)\n"
    "if i == '1' and os.environ['TRAINYARD_ATTEMPT'] == '1':\n"
    "    sys.exit(3)\n"
)


def test_each_task_sees_its_index_is_retried_alone_and_reports_its_best_metric(c: httpx.Client) -> None:
    array = submit(
        c, ENV, "--trial={index}", array={"indices": "0-2"}, retry={"max_attempts": 2, "on": ["failed"]}
    )
    done = wait_status(c, array["id"], DONE, 60)
    assert done["status"] == "SUCCEEDED", done
    listed = tasks(c, array["id"], metric="loss", best="min")
    assert [(t["index"], t["attempt"], t["best"]) for t in listed] == [(0, 1, 5.0), (1, 2, 4.0), (2, 1, 3.0)]
    highest = tasks(c, array["id"], metric="loss", best="max")
    assert [t["best"] for t in highest] == [10.0, 9.0, 8.0]
    log = c.get(f"/v1/jobs/{array['id']}-2/logs").text
    assert f"array {array['id']} index 2 arg --trial=2" in log


def test_cancel_of_the_array_stops_every_task(c: httpx.Client) -> None:
    array = submit(c, SLEEPY, "120", "{index}", array={"indices": "0-5", "parallelism": 2})
    wait_for(
        lambda: c.get(f"/v1/jobs/{array['id']}").json()["array"]["counts"].get("RUNNING") == 2,
        30,
        what="two running tasks",
    )
    assert c.get(f"/v1/jobs/{array['id']}").json()["status"] == "RUNNING"
    waiting = [t for t in tasks(c, array["id"], status="PENDING")]
    assert len(waiting) == 4 and all("array limit" in (t["pending_reason"] or "") for t in waiting), waiting
    r = c.delete(f"/v1/jobs/{array['id']}")
    assert r.status_code == 202 and r.json()["status"] in ("CANCELLING", "CANCELLED")
    done = wait_status(c, array["id"], {"CANCELLED"}, 30)
    assert done["array"]["counts"] == {"CANCELLED": 6}, done


def test_ten_thousand_tasks_are_accepted_in_one_request(c: httpx.Client) -> None:
    # A pool no worker has: the tasks wait, and are cancelled with their array.
    body = {"command": ["true", "{index}"], "array": {"indices": "0-9999"}, "pool": "nowhere"}
    # Its speed (about 0.3 s) is the bench's array_submit row, not a timed assertion here.
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    array = r.json()
    assert array["array"]["tasks"] == 10_000 and array["array"]["counts"] == {"PENDING": 10_000}
    page = c.get(f"/v1/jobs/{array['id']}/tasks", params={"limit": 1000}).json()
    assert len(page["tasks"]) == 1000 and page["next_cursor"]
    assert c.delete(f"/v1/jobs/{array['id']}").json()["status"] == "CANCELLED"


# ---- dependencies ----------------------------------------------------------------------------------

TRAIN = (
    "import sys, time, trainyard.job as tj\n"
    "time.sleep(float(sys.argv[1]))\n"
    "(tj.artifact_dir() / 'model.txt').write_text('weights of ' + sys.argv[2])\n"
    "sys.exit(int(sys.argv[3]))\n"
)
EVALUATE = (
    "import trainyard.job as tj\n"
    "for p in tj.dependency_artifacts():\n"
    "    print('got', p.parent.name, p.name, p.read_text(), flush=True)\n"
)


def test_a_pipeline_step_waits_then_reads_its_dependencys_artifacts(c: httpx.Client) -> None:
    train = submit(c, TRAIN, "2", "train", "0", name="train")
    evaluate = submit(c, EVALUATE, name="evaluate", depends_on=[{"job": train["id"]}])
    reason = wait_for(
        lambda: (
            (v := c.get(f"/v1/jobs/{evaluate['id']}").json())["pending_reason"]
            == (f"waiting for job {train['id']} (RUNNING)")
            and v
        ),
        30,
        what="the waiting reason",
    )
    assert reason["status"] == "PENDING"
    done = wait_status(c, evaluate["id"], DONE, 60)
    assert done["status"] == "SUCCEEDED", done
    assert f"got {train['id']} model.txt weights of train" in c.get(f"/v1/jobs/{evaluate['id']}/logs").text


@pytest.mark.parametrize(
    ("condition", "exit_code", "runs"),
    [("succeeded", 1, False), ("failed", 1, True), ("failed", 0, False), ("finished", 1, True)],
)
def test_each_condition_and_the_never_satisfied_ending(
    c: httpx.Client, condition: str, exit_code: int, runs: bool
) -> None:
    first = submit(c, TRAIN, "0", "first", str(exit_code), retry={"max_attempts": 1})
    then = submit(c, "print('ran')", depends_on=[{"job": first["id"], "condition": condition}])
    ended = wait_status(c, first["id"], DONE, 30)["status"]
    done = wait_status(c, then["id"], DONE, 30)
    if runs:
        assert done["status"] == "SUCCEEDED", done
    else:
        assert done["status"] == "FAILED" and done["attempts"] == [], done
        assert done["reason"] == f"dependency never satisfied: job {first['id']} ended {ended}"


def test_an_array_as_a_dependency_hands_on_every_tasks_artifacts(c: httpx.Client) -> None:
    sweep = submit(c, TRAIN, "0", "trial-{index}", "0", array={"indices": "0-2"})
    evaluate = submit(c, EVALUATE, depends_on=[{"job": sweep["id"]}])
    done = wait_status(c, evaluate["id"], DONE, 60)
    assert done["status"] == "SUCCEEDED", done
    log = c.get(f"/v1/jobs/{evaluate['id']}/logs").text
    for i in range(3):
        assert f"got {sweep['id']}-{i} model.txt weights of trial-{i}" in log, log


def test_an_array_waits_for_its_dependency_and_fails_with_it(c: httpx.Client) -> None:
    train = submit(c, TRAIN, "0", "train", "2", retry={"max_attempts": 1})
    sweep = submit(c, SLEEPY, "0", "{index}", array={"indices": "0-3"}, depends_on=[{"job": train["id"]}])
    done = wait_status(c, sweep["id"], DONE, 30)
    assert done["status"] == "FAILED" and done["array"]["counts"] == {"FAILED": 4}, done
    assert done["reason"] == f"dependency never satisfied: job {train['id']} ended FAILED"


def test_a_missing_or_hidden_dependency_is_refused_at_submit(cp: ControlPlane, c: httpx.Client) -> None:
    r = c.post("/v1/jobs", json={"command": ["true"], "depends_on": [{"job": "j0000000000nosuchjob"}]})
    assert r.status_code == 422
    assert r.json()["error"]["details"] == [
        {"field": "depends_on.0.job", "message": "no job j0000000000nosuchjob that you may see"}
    ]
    token_a = c.post("/v1/admin/users", json={"name": "ada", "team": "vision"}).json()["token"]
    token_b = c.post("/v1/admin/users", json={"name": "bo", "team": "nlp"}).json()["token"]
    with cp.client(token_a) as a, cp.client(token_b) as b:
        theirs = a.post("/v1/jobs", json={"command": ["true"], "cwd": str(REPO)}).json()["id"]
        r = b.post("/v1/jobs", json={"command": ["true"], "depends_on": [{"job": theirs}]})
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "depends_on.0.job"
        bad = b.post("/v1/jobs", json={"command": ["true"], "array": {"indices": "0-10000"}})
        assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "array.indices"
