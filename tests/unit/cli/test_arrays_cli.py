"""`yard submit --array/--after-*`, `yard ls` and `yard get` of an array, and `yard tasks`, through
CliRunner against a scripted API."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result
from yard_fake import FakeAPI, job

from trainyard.cli.main import State, app


def yard(state: State, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), obj=state)


@pytest.fixture
def accept(api: FakeAPI) -> FakeAPI:
    api.on("POST", "/v1/jobs", lambda r: httpx.Response(201, json=job("j01a", spec=json.loads(r.content))))
    return api


def submitted(api: FakeAPI) -> dict[str, Any]:
    (req,) = api.calls("POST", "/v1/jobs")
    body: dict[str, Any] = json.loads(req.content)
    return body


def test_submit_an_array_with_its_limit_and_the_index_in_the_command(state: State, accept: FakeAPI) -> None:
    res = yard(state, "submit", "--array", "0-199%16", "--", "python", "train.py", "--trial", "{index}")
    assert res.exit_code == 0, res.stderr
    body = submitted(accept)
    assert body["array"] == {"indices": "0-199", "parallelism": 16}
    assert body["command"] == ["python", "train.py", "--trial", "{index}"]


def test_submit_help_says_what_index_becomes(state: State) -> None:
    res = yard(state, "submit", "--help")
    assert "{index}" in res.stdout and "TRAINYARD_ARRAY_INDEX" in res.stdout


def test_a_bad_array_flag_is_refused_before_sending(state: State, api: FakeAPI) -> None:
    res = yard(state, "submit", "--array", "9-1", "--", "true")
    assert res.exit_code != 0 and "--array" in res.stderr and "run upwards" in res.stderr
    assert not api.calls("POST", "/v1/jobs")


def test_dependencies_from_flags_join_the_files(state: State, accept: FakeAPI, tmp_path: Any) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("command: [python, eval.py]\ndepends_on: [{job: j01x}, {job: j01y, condition: failed}]\n")
    res = yard(
        state,
        "submit",
        "-f",
        str(spec),
        "--after-ok",
        "j01a",
        "--after-ok",
        "j01b",
        "--after-any",
        "j01y",
        "--after-not-ok",
        "j01c",
    )
    assert res.exit_code == 0, res.stderr
    assert submitted(accept)["depends_on"] == [
        {"job": "j01x"},
        {"job": "j01a", "condition": "succeeded"},
        {"job": "j01b", "condition": "succeeded"},
        {"job": "j01c", "condition": "failed"},
        {"job": "j01y", "condition": "finished"},
    ]


ARRAY = {
    "indices": "0-199",
    "parallelism": 16,
    "tasks": 200,
    "counts": {"RUNNING": 16, "SUCCEEDED": 40, "FAILED": 2, "PENDING": 142},
    "done": 42,
}


def test_ls_shows_an_array_once_with_its_counts(state: State, api: FakeAPI) -> None:
    api.on(
        "GET",
        "/v1/jobs",
        {"jobs": [job("j02", status="RUNNING", array=ARRAY), job("j01")], "next_cursor": None},
    )
    res = yard(state, "ls")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "RUNNING (200 tasks: 42 done, 16 running)" in lines[1]
    assert lines[2].split()[2] == "PENDING"


def test_get_of_an_array_shows_its_counts_and_first_tasks(state: State, api: FakeAPI) -> None:
    api.on("GET", "/v1/jobs/j02", job("j02", status="RUNNING", array=ARRAY))
    task = {"id": "j02-0", "index": 0, "status": "SUCCEEDED", "attempt": 1, "exit_code": 0, "reason": None}
    api.on("GET", "/v1/jobs/j02/tasks", {"tasks": [task], "next_cursor": "more"})
    res = yard(state, "get", "j02")
    assert res.exit_code == 0, res.stderr
    assert "indices 0-199, at most 16 at once" in res.stdout
    assert "200: 142 PENDING, 40 SUCCEEDED, 16 RUNNING, 2 FAILED" in res.stdout
    assert "j02-0" in res.stdout and "yard tasks j02" in res.stderr


def test_tasks_lists_pages_with_the_best_metric(state: State, api: FakeAPI) -> None:
    pages = {
        None: {
            "tasks": [{"id": "j02-0", "index": 0, "status": "SUCCEEDED", "best": 0.25}],
            "next_cursor": "c",
        },
        "c": {
            "tasks": [{"id": "j02-1", "index": 1, "status": "FAILED", "reason": "exit 1"}],
            "next_cursor": None,
        },
    }
    api.on("GET", "/v1/jobs/j02/tasks", lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")]))
    res = yard(state, "tasks", "j02", "--all", "--metric", "loss", "--best", "min", "-s", "succeeded")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["INDEX", "ID", "STATUS", "ATTEMPTS", "EXIT", "BEST", "LOSS", "WHY"]
    assert lines[1].split()[:3] == ["0", "j02-0", "SUCCEEDED"] and "0.25" in lines[1]
    assert "exit 1" in lines[2]
    first = api.calls("GET", "/v1/jobs/j02/tasks")[0].url.params
    assert (first["metric"], first["best"], first.get_list("status")) == ("loss", "min", ["SUCCEEDED"])
