"""`yard` commands through CliRunner against a scripted API."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result
from yard_fake import DropStream, FakeAPI, attempt, error, job

from trainyard.cli.main import State, admin_app, app


def yard(state: State, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), obj=state)


def submitted(api: FakeAPI) -> dict[str, Any]:
    (req,) = api.calls("POST", "/v1/jobs")
    body: dict[str, Any] = json.loads(req.content)
    return body


@pytest.fixture
def accept(api: FakeAPI) -> FakeAPI:
    api.on("POST", "/v1/jobs", lambda r: httpx.Response(201, json=job("j-42", spec=json.loads(r.content))))
    return api


# -- submit ------------------------------------------------------------------------------------


def test_submit_maps_flags_and_passes_command_options_through(state: State, accept: FakeAPI) -> None:
    res = yard(
        state,
        "submit",
        "--name", "resnet",
        "--cpu", "4",
        "--memory", "16Gi",
        "--gpu", "2",
        "--gpu-type", "a100",
        "--pool", "gpu",
        "--team", "vision",
        "--priority", "high",
        "--max-runtime", "2h",
        "--retries", "2",
        "--env", "LR=0.1",
        "--env", "EPS=a=b",
        "--artifacts", "outputs/",
        "--artifacts", "model.pt",
        "--kind", "eval",
        "--image", "pytorch:2",
        "--",
        "python", "train.py", "--epochs", "5", "--cpu", "9", "-f", "x",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert res.stdout == "j-42\n"
    body = submitted(accept)
    assert body["command"] == ["python", "train.py", "--epochs", "5", "--cpu", "9", "-f", "x"]
    assert body["name"] == "resnet"
    assert body["resources"] == {"cpu": 4.0, "memory": "16Gi", "gpu": 2, "gpu_type": "a100"}
    assert (body["pool"], body["team"], body["priority"], body["kind"]) == ("gpu", "vision", "high", "eval")
    assert body["max_runtime"] == "2h"
    assert body["retry"]["max_attempts"] == 3
    assert body["retry"]["on"] == ["infra", "failed"]
    assert body["env"] == {"LR": "0.1", "EPS": "a=b"}
    assert body["artifacts"] == ["outputs/", "model.pt"]
    assert body["image"] == "pytorch:2"
    assert body["cwd"] == os.getcwd()
    assert "workdir" not in body


def test_submit_command_options_without_double_dash(state: State, accept: FakeAPI) -> None:
    res = yard(state, "submit", "--gpu", "1", "python", "train.py", "--epochs", "5")
    assert res.exit_code == 0, res.stderr
    body = submitted(accept)
    assert body["command"] == ["python", "train.py", "--epochs", "5"]
    assert body["resources"] == {"gpu": 1}


def test_submit_file_merged_with_flags(state: State, accept: FakeAPI, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: from-file\n"
        "command: [python, train.py]\n"
        "env: {A: '1', B: '2'}\n"
        "resources: {cpu: 2, memory: 8Gi, gpu: 1, gpu_type: a100}\n"
        "retry: {max_attempts: 2, backoff: 30s, on: [infra]}\n"
        "cwd: /data/project\n"
    )
    res = yard(state, "submit", "-f", str(spec), "--memory", "32Gi", "--env", "B=3", "--retries", "4")
    assert res.exit_code == 0, res.stderr
    body = submitted(accept)
    assert body["name"] == "from-file"
    assert body["command"] == ["python", "train.py"]
    assert body["resources"] == {"cpu": 2.0, "memory": "32Gi", "gpu": 1, "gpu_type": "a100"}
    assert body["env"] == {"A": "1", "B": "3"}
    assert body["retry"] == {"max_attempts": 5, "backoff": "30s", "on": ["infra", "failed"]}
    assert body["cwd"] == "/data/project"  # the file's choice stands


def test_submit_command_flag_replaces_file_command(state: State, accept: FakeAPI, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("command: [python, old.py]\n")
    assert yard(state, "submit", "-f", str(spec), "--", "python", "new.py").exit_code == 0
    assert submitted(accept)["command"] == ["python", "new.py"]


def test_submit_local_validation_errors(state: State, api: FakeAPI) -> None:
    res = yard(state, "submit", "--memory", "lots", "--gpu-type", "A100!", "--priority", "meh", "--", "x")
    assert res.exit_code == 1
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert lines[0] == "error: invalid job spec"
    fields = {line.split(":")[0].strip() for line in lines[1:]}
    assert {"resources.memory", "resources.gpu_type", "priority"} <= fields
    assert not api.requests


def test_submit_needs_a_command(state: State, api: FakeAPI) -> None:
    res = yard(state, "submit", "--cpu", "1")
    assert res.exit_code == 1
    assert "command" in res.stderr
    assert not api.requests


def test_submit_bad_yaml(state: State, api: FakeAPI, tmp_path: Path) -> None:
    bad = tmp_path / "job.yaml"
    bad.write_text("command: [unclosed\n")
    res = yard(state, "submit", "-f", str(bad))
    assert res.exit_code == 1
    assert res.stderr.startswith(f"error: {bad} is not valid YAML")
    res = yard(state, "submit", "-f", str(tmp_path / "missing.yaml"))
    assert res.exit_code == 1
    assert "cannot read" in res.stderr


def test_submit_server_error_rendering(state: State, api: FakeAPI) -> None:
    details = [
        {"field": "resources.gpu", "message": "no pool has 64 GPUs"},
        {"field": "team", "message": "unknown"},
    ]
    api.on("POST", "/v1/jobs", error(422, "invalid_spec", "the job cannot run here", details))
    res = yard(state, "submit", "--", "true")
    assert res.exit_code == 1
    assert res.stdout == ""
    assert res.stderr == (
        "error: the job cannot run here\n  resources.gpu: no pool has 64 GPUs\n  team: unknown\n"
    )


def test_submit_idempotency_key(state: State, accept: FakeAPI) -> None:
    assert yard(state, "submit", "--idempotency-key", "abc-1", "--", "true").exit_code == 0
    assert yard(state, "submit", "--", "true").exit_code == 0
    first, second = accept.calls("POST", "/v1/jobs")
    assert first.headers["Idempotency-Key"] == "abc-1"
    assert second.headers["Idempotency-Key"] not in ("", "abc-1")


def test_submit_output_json(state: State, accept: FakeAPI) -> None:
    res = yard(state, "submit", "-o", "json", "--", "true")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["id"] == "j-42"


def test_submit_workdir_uploads_bundle(state: State, accept: FakeAPI, tmp_path: Path) -> None:
    src = tmp_path / "proj"
    src.mkdir()
    (src / "train.py").write_text("print('hi')\n")
    accept.on("POST", "/v1/workdirs", httpx.Response(201, json={"workdir": "wd-1", "sha256": "s", "size": 9}))
    res = yard(state, "submit", "--workdir", str(src), "--", "python", "train.py")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == "j-42\n"
    body = submitted(accept)
    assert body["workdir"] == "wd-1"
    assert "cwd" not in body


def test_submit_workdir_too_big(
    state: State, api: FakeAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "proj"
    src.mkdir()
    (src / "big.bin").write_bytes(b"\0" * 4096)
    monkeypatch.setenv("TRAINYARD_WORKDIR_LIMIT", "1Ki")
    res = yard(state, "submit", "--workdir", str(src), "--", "true")
    assert res.exit_code == 1
    assert "over the 1 KiB limit" in res.stderr
    assert "big.bin (4 KiB)" in res.stderr
    assert not api.requests


# -- get / ls ----------------------------------------------------------------------------------


def test_get_table_shows_attempts_and_pending_reason(state: State, api: FakeAPI) -> None:
    api.on(
        "GET",
        "/v1/jobs/j-7",
        job(
            "j-7",
            status="PENDING",
            attempt=1,
            pending_reason="waiting for 2 x a100 in pool gpu",
            attempts=[
                attempt(1, status="LOST", outcome="lost", worker_id="w-9", exit_code=None, reason="lost")
            ],
        ),
    )
    res = yard(state, "get", "j-7")
    assert res.exit_code == 0, res.stderr
    assert "\x1b[" not in res.stdout
    fields = dict(line.split(":", 1) for line in res.stdout.split("\n\n")[0].splitlines())
    assert fields["Status"].strip() == "PENDING"
    assert fields["Pending"].strip() == "waiting for 2 x a100 in pool gpu"
    assert fields["User/Team"].strip() == "alice / vision"
    header, row = res.stdout.split("\n\n")[1].splitlines()
    assert header.split() == ["ATTEMPT", "WORKER", "STATUS", "STARTED", "FINISHED", "EXIT", "REASON"]
    assert row.split()[:3] == ["1", "w-9", "LOST"]


def test_get_shows_queue_place_and_an_eta_read_at_a_glance(state: State, api: FakeAPI) -> None:
    eta = datetime.now(UTC) + timedelta(minutes=25)
    api.on(
        "GET",
        "/v1/jobs/j-8",
        job("j-8", status="PENDING", queue_position=2, estimated_start_at=eta.isoformat()),
    )
    res = yard(state, "get", "j-8")
    assert res.exit_code == 0, res.stderr
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in res.stdout.splitlines() if line)}
    assert fields["Queue"] == "#2 in team vision's queue"
    assert fields["Starts"] == "in 25 min (latest estimate)"
    api.on("GET", "/v1/jobs/j-9", job("j-9", status="PENDING", estimated_start_at=None))
    res = yard(state, "get", "j-9")
    assert "Starts:" in res.stdout and "no estimate yet" in res.stdout


def test_get_json_and_not_found(state: State, api: FakeAPI) -> None:
    api.on("GET", "/v1/jobs/j-1", job())
    res = yard(state, "get", "j-1", "-o", "json")
    assert json.loads(res.stdout)["id"] == "j-1"
    res = yard(state, "get", "nope")
    assert res.exit_code == 1
    assert res.stderr.startswith("error: no route")


def test_ls_pages_with_all(state: State, api: FakeAPI) -> None:
    pages = {
        None: {
            "jobs": [job("j-3", status="RUNNING"), job("j-2", status="FAILED", exit_code=2)],
            "next_cursor": "c",
        },
        "c": {"jobs": [job("j-1", status="SUCCEEDED", exit_code=0, attempt=1)], "next_cursor": None},
    }
    api.on("GET", "/v1/jobs", lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")]))
    res = yard(state, "ls", "--all", "--limit", "2", "--status", "running", "--status", "FAILED")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "USER", "TEAM", "AGE", "ATTEMPTS", "EXIT"]
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == ["j-3", "j-2", "j-1"]
    assert rows[1][2] == "FAILED" and rows[1][-1] == "2"
    assert rows[2][6] == "1"
    calls = api.calls("GET", "/v1/jobs")
    assert len(calls) == 2
    assert calls[0].url.params.get_list("status") == ["RUNNING", "FAILED"]
    assert calls[1].url.params["cursor"] == "c"


def test_ls_single_page_hints_more(state: State, api: FakeAPI) -> None:
    api.on("GET", "/v1/jobs", {"jobs": [job("j-2")], "next_cursor": "c"})
    res = yard(state, "ls", "--limit", "1")
    assert len(api.requests) == 1
    assert "--all" in res.stderr
    res = yard(state, "ls", "-o", "json")
    assert json.loads(res.stdout)["next_cursor"] == "c"


# -- logs --------------------------------------------------------------------------------------


def test_logs_writes_raw_bytes(state: State, api: FakeAPI) -> None:
    api.on("GET", "/v1/jobs/j-1/logs", httpx.Response(200, content=b"ok \xff\xfe\n"))
    res = yard(state, "logs", "j-1", "--tail", "10")
    assert res.exit_code == 0
    assert res.stdout_bytes == b"ok \xff\xfe\n"
    assert api.requests[-1].url.params["tail"] == "10"


@pytest.mark.parametrize(
    ("status", "exit_code", "expected"),
    [
        ("SUCCEEDED", 0, 0),
        ("FAILED", 3, 3),
        ("FAILED", None, 1),
        ("TIMED_OUT", None, 1),
        ("CANCELLED", None, 130),
    ],
)
def test_logs_follow_exit_code(
    state: State, api: FakeAPI, status: str, exit_code: int | None, expected: int
) -> None:
    api.on(
        "GET",
        "/v1/jobs/j-1",
        job(status="RUNNING", attempt=1, attempts=[attempt(1, finished=False)]),
        job(status=status, attempt=1, exit_code=exit_code, attempts=[attempt(1, exit_code=exit_code)]),
    )
    api.on("GET", "/v1/jobs/j-1/logs", httpx.Response(200, stream=DropStream(b"line\n", drop=False)))
    res = yard(state, "logs", "-f", "j-1")
    assert res.stdout_bytes == b"line\n"
    assert res.exit_code == expected


def test_logs_follow_reconnects(state: State, api: FakeAPI) -> None:
    api.on(
        "GET",
        "/v1/jobs/j-1",
        job(status="RUNNING", attempt=1, attempts=[attempt(1, finished=False)]),
        job(status="FAILED", attempt=1, exit_code=7, attempts=[attempt(1, exit_code=7)]),
    )
    api.on(
        "GET",
        "/v1/jobs/j-1/logs",
        httpx.Response(200, stream=DropStream(b"epoch 1\n")),
        httpx.Response(200, stream=DropStream(b"epoch 2\n", drop=False)),
    )
    res = yard(state, "logs", "-f", "j-1")
    assert res.stdout_bytes == b"epoch 1\nepoch 2\n"
    assert res.exit_code == 7
    assert [r.url.params["since"] for r in api.calls("GET", "/v1/jobs/j-1/logs")] == ["0", "8"]


def test_logs_follow_pinned_attempt_uses_its_outcome(state: State, api: FakeAPI) -> None:
    api.on(
        "GET",
        "/v1/jobs/j-1",
        job(status="SUCCEEDED", attempt=2, attempts=[attempt(1, outcome="failed", exit_code=4), attempt(2)]),
    )
    api.on("GET", "/v1/jobs/j-1/logs", httpx.Response(200, content=b"boom\n"))
    res = yard(state, "logs", "-f", "--attempt", "1", "j-1")
    assert res.exit_code == 4
    assert api.calls("GET", "/v1/jobs/j-1/logs")[0].url.params["attempt"] == "1"


# -- cancel / restart / events -----------------------------------------------------------------


def test_cancel_many_reports_each(state: State, api: FakeAPI) -> None:
    api.on("DELETE", "/v1/jobs/j-1", httpx.Response(202, json=job("j-1", status="CANCELLING")))
    api.on("DELETE", "/v1/jobs/j-3", httpx.Response(202, json=job("j-3", status="CANCELLED")))
    res = yard(state, "cancel", "j-1", "j-2", "j-3")
    assert res.exit_code == 1
    assert [line.split() for line in res.stdout.splitlines()] == [["j-1", "CANCELLING"], ["j-3", "CANCELLED"]]
    assert res.stderr.startswith("error: j-2: ")


def test_restart_conflict(state: State, api: FakeAPI) -> None:
    api.on("POST", "/v1/jobs/j-1/restart", error(409, "not_finished", "job j-1 is RUNNING; cancel it first"))
    res = yard(state, "restart", "j-1")
    assert res.exit_code == 1
    assert res.stderr == "error: job j-1 is RUNNING; cancel it first\n"


def test_events_follow_prints_lines(state: State, api: FakeAPI) -> None:
    body = (
        b'event: job_event\nid: 1\ndata: {"id": 1, "type": "submitted", "to_status": "PENDING"}\n\n'
        b'event: job_event\nid: 2\ndata: {"id": 2, "type": "finished", "from_status": "RUNNING",'
        b' "to_status": "SUCCEEDED", "data": {"exit_code": 0}}\n\n'
        b"event: end\ndata: {}\n\n"
    )
    api.on("GET", "/v1/jobs/j-1/events", httpx.Response(200, content=body))
    res = yard(state, "events", "j-1", "-f")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert len(lines) == 2
    assert "SUCCEEDED" in lines[1] and "exit_code=0" in lines[1]


# -- artifacts ---------------------------------------------------------------------------------


def _listing(data: bytes, sha: str | None = None) -> dict[str, Any]:
    art = {
        "path": "out/model.pt",
        "size": len(data),
        "sha256": sha or hashlib.sha256(data).hexdigest(),
        "attempt": 1,
        "url": "http://objects.test/b/out/model.pt?sig=1",
    }
    return {"artifacts": [art]}


def test_artifacts_download_verified(state: State, api: FakeAPI, tmp_path: Path) -> None:
    api.on("GET", "/v1/jobs/j-1/artifacts", _listing(b"weights"))
    api.on("GET", "/b/out/model.pt", httpx.Response(200, content=b"weights"))
    res = yard(state, "artifacts", "j-1", "--download", str(tmp_path / "dl"))
    assert res.exit_code == 0, res.stderr
    assert res.stdout == f"{tmp_path / 'dl' / 'out' / 'model.pt'}  verified sha256\n"
    assert (tmp_path / "dl" / "out" / "model.pt").read_bytes() == b"weights"


def test_artifacts_download_mismatch_fails(state: State, api: FakeAPI, tmp_path: Path) -> None:
    api.on("GET", "/v1/jobs/j-1/artifacts", _listing(b"weights"))
    api.on("GET", "/b/out/model.pt", httpx.Response(200, content=b"tampered"))
    res = yard(state, "artifacts", "j-1", "--download", str(tmp_path / "dl"))
    assert res.exit_code == 1
    assert "does not match" in res.stderr
    assert not (tmp_path / "dl" / "out" / "model.pt").exists()


def test_artifacts_list(state: State, api: FakeAPI) -> None:
    api.on("GET", "/v1/jobs/j-1/artifacts", _listing(b"x" * 2048))
    res = yard(state, "artifacts", "j-1", "--attempt", "1")
    assert res.exit_code == 0
    row = res.stdout.splitlines()[1].split()
    assert row[0] == "out/model.pt"
    assert row[1:3] == ["2", "KiB"]
    assert api.requests[-1].url.params["attempt"] == "1"


# -- fleet, admin, config ----------------------------------------------------------------------


def test_workers_and_queues_tables(state: State, api: FakeAPI) -> None:
    api.on(
        "GET",
        "/v1/workers",
        {
            "workers": [
                {
                    "id": "w-1",
                    "name": "node-a",
                    "hostname": "a",
                    "pool": "gpu",
                    "region": "us-east-1",
                    "status": "ALIVE",
                    "capacity": {"cpu": 32, "memory": 128 * 1024**3, "gpu": 8, "gpu_type": "a100"},
                    "allocated": {"cpu": 4, "memory": 16 * 1024**3, "gpu": 2},
                    "running": 2,
                    "last_heartbeat": "2024-05-01T12:00:00Z",
                }
            ]
        },
    )
    api.on(
        "GET",
        "/v1/queues",
        {
            "pools": [{"pool": "gpu", "pending": 5, "running": 2}],
            "teams": [{"team": "vision", "pending": 5, "running": 2, "cpu": 4, "memory": 1024**3, "gpu": 2}],
        },
    )
    res = yard(state, "workers")
    assert res.exit_code == 0, res.stderr
    row = res.stdout.splitlines()[1]
    assert row.split()[:5] == ["node-a", "gpu", "us-east-1", "ALIVE", "4/32"]
    assert "16 GiB/128 GiB" in row and "2/8 a100" in row
    res = yard(state, "queues")
    assert res.stdout.splitlines()[1].split() == ["gpu", "5", "2"]
    assert "vision" in res.stdout
    res = yard(state, "queues", "-o", "json")
    assert json.loads(res.stdout)["pools"][0]["pending"] == 5


def test_admin_create_user_prints_only_token(state: State, api: FakeAPI) -> None:
    api.on(
        "POST",
        "/v1/admin/users",
        httpx.Response(201, json={"name": "bob", "team": "nlp", "role": "admin", "token": "ty_tok"}),
    )
    res = yard(state, "admin", "create-user", "bob", "--team", "nlp", "--role", "admin")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == "ty_tok\n"
    assert json.loads(api.requests[-1].content) == {"name": "bob", "team": "nlp", "role": "admin"}
    assert admin_app.registered_commands


def test_global_url_and_token_options(api: FakeAPI) -> None:
    api.on("GET", "/v1/workers", {"workers": []})
    st = State(transport=httpx.MockTransport(api))
    res = CliRunner().invoke(app, ["--url", "http://other:1", "--token", "t2", "workers"], obj=st)
    assert res.exit_code == 0, res.stderr
    assert api.requests[-1].url.host == "other"
    assert api.requests[-1].headers["Authorization"] == "Bearer t2"


def test_unreachable_server_is_a_clean_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    st = State(url="http://127.0.0.1:9", transport=httpx.MockTransport(refuse), reconnect_delay=0)
    res = CliRunner().invoke(app, ["ls"], obj=st)
    assert res.exit_code == 1
    assert res.stderr.startswith("error: cannot reach the Trainyard server at http://127.0.0.1:9")


def test_rich_table_on_a_terminal(state: State, api: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainyard.cli import output

    monkeypatch.setattr(output, "_tty", lambda: True)
    api.on("GET", "/v1/jobs", {"jobs": [job("j-1", status="RUNNING")], "next_cursor": None})
    res = yard(state, "ls")
    assert res.exit_code == 0, res.stderr
    assert "j-1" in res.stdout and "RUNNING" in res.stdout
