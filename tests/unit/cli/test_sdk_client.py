"""The SDK against a scripted API: configuration, errors, paging, log following, artifacts."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from yard_fake import BASE, DropStream, FakeAPI, attempt, error, job

from trainyard.client.sdk import (
    Client,
    Conflict,
    ConnectionFailed,
    IntegrityError,
    NotFound,
    RateLimited,
    TrainyardError,
    ValidationFailed,
    job_exit_code,
)
from trainyard.model.spec import JobSpec, Resources

# -- configuration -----------------------------------------------------------------------------


def test_config_from_home_files(api: FakeAPI, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "url").write_text("http://from-file:9000/\n")
    (home / "token").write_text("file-token\n")
    api.on("GET", "/v1/workers", {"workers": []})
    c = Client(home=home, transport=httpx.MockTransport(api))
    assert c.url == "http://from-file:9000"
    c.workers()
    req = api.requests[-1]
    assert req.headers["Authorization"] == "Bearer file-token"
    assert req.url.host == "from-file"


def test_config_env_beats_files_and_default_home(
    api: FakeAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / ".trainyard"  # the default TRAINYARD_HOME, relative to the cwd
    home.mkdir()
    (home / "url").write_text("http://from-file:9000")
    (home / "token").write_text("file-token")
    assert Client().url == "http://from-file:9000"
    monkeypatch.setenv("TRAINYARD_URL", "http://from-env:1")
    monkeypatch.setenv("TRAINYARD_TOKEN", "env-token")
    c = Client()
    assert (c.url, c.token) == ("http://from-env:1", "env-token")
    assert Client(url="http://arg:2", token="arg").token == "arg"


def test_default_url_without_config() -> None:
    c = Client()
    assert c.url == "http://127.0.0.1:8080"
    assert c.token is None


# -- errors ------------------------------------------------------------------------------------


def test_error_body_becomes_typed_exception(client: Client, api: FakeAPI) -> None:
    details = [{"field": "resources.memory", "message": "too big"}]
    api.on("POST", "/v1/jobs", error(422, "invalid_spec", "invalid job spec", details))
    with pytest.raises(ValidationFailed) as info:
        client.submit({"command": ["true"]})
    assert info.value.status == 422
    assert info.value.code == "invalid_spec"
    assert info.value.details == details


def test_rate_limited_carries_retry_after(client: Client, api: FakeAPI) -> None:
    resp = error(429, "rate_limited", "slow down")
    resp.headers["Retry-After"] = "7"
    api.on("POST", "/v1/jobs", resp)
    with pytest.raises(RateLimited) as info:
        client.submit({"command": ["true"]})
    assert info.value.retry_after == 7.0


def test_non_json_error_and_status_classes(client: Client, api: FakeAPI) -> None:
    api.on("GET", "/v1/jobs/gone", error(404, "not_found", "job gone not found"))
    api.on("POST", "/v1/jobs/j-1/restart", error(409, "not_finished", "job is RUNNING"))
    api.on("GET", "/v1/queues", httpx.Response(502, text="Bad Gateway from proxy"))
    with pytest.raises(NotFound):
        client.get("gone")
    with pytest.raises(Conflict):
        client.restart("j-1")
    with pytest.raises(TrainyardError) as info:
        client.queues()
    assert info.value.status == 502
    assert "Bad Gateway from proxy" in info.value.message


def test_missing_token_hint_on_401(api: FakeAPI) -> None:
    api.on("GET", "/v1/workers", error(401, "unauthorized", "missing bearer token"))
    c = Client(url=BASE, transport=httpx.MockTransport(api))
    with pytest.raises(TrainyardError) as info:
        c.workers()
    assert "Authorization" not in api.requests[-1].headers
    assert "TRAINYARD_TOKEN" in info.value.message


# -- submit ------------------------------------------------------------------------------------


def test_submit_validates_locally_before_sending(client: Client, api: FakeAPI) -> None:
    with pytest.raises(ValidationFailed) as info:
        client.submit({"command": ["x"], "resources": {"memory": "lots"}})
    assert not api.requests
    assert [d["field"] for d in info.value.details] == ["resources.memory"]
    assert not info.value.details[0]["message"].startswith("Value error")


def test_submit_sends_key_and_only_set_fields(client: Client, api: FakeAPI) -> None:
    api.on("POST", "/v1/jobs", lambda r: httpx.Response(201, json=job("j-9")))
    out = client.submit(
        JobSpec(command=("python", "t.py"), resources=Resources(gpu=1)), idempotency_key="k-1"
    )
    assert out["id"] == "j-9"
    req = api.requests[-1]
    assert req.headers["Idempotency-Key"] == "k-1"
    body = api.body(req)
    assert body["command"] == ["python", "t.py"]
    assert body["resources"] == {"gpu": 1}
    assert "team" not in body  # left for the server to default


def test_submit_without_key_sends_no_header(client: Client, api: FakeAPI) -> None:
    api.on("POST", "/v1/jobs", httpx.Response(201, json=job()))
    client.submit({"command": ["true"]})
    assert "Idempotency-Key" not in api.requests[-1].headers


def test_keyed_submit_is_resent_after_a_dropped_response(client: Client, api: FakeAPI) -> None:
    def dropped(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset")

    api.on("POST", "/v1/jobs", dropped, httpx.Response(200, json=job("j-5")))
    assert client.submit({"command": ["true"]}, idempotency_key="same")["id"] == "j-5"
    keys = [r.headers["Idempotency-Key"] for r in api.calls("POST", "/v1/jobs")]
    assert keys == ["same", "same"]


def test_unkeyed_submit_is_not_resent(client: Client, api: FakeAPI) -> None:
    def dropped(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset")

    api.on("POST", "/v1/jobs", dropped, httpx.Response(200, json=job("j-5")))
    with pytest.raises(ConnectionFailed):
        client.submit({"command": ["true"]})
    assert len(api.calls("POST", "/v1/jobs")) == 1


# -- listing -----------------------------------------------------------------------------------


def test_iter_jobs_follows_cursors(client: Client, api: FakeAPI) -> None:
    pages = {
        None: {"jobs": [job("j-3"), job("j-2")], "next_cursor": "c1"},
        "c1": {"jobs": [job("j-1")], "next_cursor": None},
    }
    api.on("GET", "/v1/jobs", lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")]))
    ids = [j["id"] for j in client.iter_jobs(status=["RUNNING", "PENDING"], team="vision", page_size=2)]
    assert ids == ["j-3", "j-2", "j-1"]
    first, second = api.calls("GET", "/v1/jobs")
    assert first.url.params.get_list("status") == ["RUNNING", "PENDING"]
    assert first.url.params["limit"] == "2"
    assert first.url.params["team"] == "vision"
    assert second.url.params["cursor"] == "c1"


def test_list_returns_page_and_cursor(client: Client, api: FakeAPI) -> None:
    api.on("GET", "/v1/jobs", {"jobs": [job("j-1")], "next_cursor": "next"})
    jobs, cursor = client.list(limit=1)
    assert [j["id"] for j in jobs] == ["j-1"]
    assert cursor == "next"


# -- logs --------------------------------------------------------------------------------------


def _logs_route(api: FakeAPI, *answers: httpx.Response | Callable[[httpx.Request], httpx.Response]) -> None:
    api.on("GET", "/v1/jobs/j-1/logs", *answers)


def test_follow_logs_reconnects_with_since(client: Client, api: FakeAPI) -> None:
    running = job(status="RUNNING", attempt=1, attempts=[attempt(1, finished=False)])
    done = job(status="SUCCEEDED", attempt=1, exit_code=0, attempts=[attempt(1)])
    api.on("GET", "/v1/jobs/j-1", running, done)
    _logs_route(
        api,
        httpx.Response(200, headers={"X-Trainyard-Attempt": "1"}, stream=DropStream(b"hello ", b"wor")),
        httpx.Response(200, headers={"X-Trainyard-Attempt": "1"}, stream=DropStream(b"ld\n", drop=False)),
    )
    assert b"".join(client.follow_logs("j-1")) == b"hello world\n"
    assert len(api.calls("GET", "/v1/jobs/j-1")) == 2
    first, second = api.calls("GET", "/v1/jobs/j-1/logs")
    assert first.url.params["since"] == "0"
    assert second.url.params["since"] == "9"
    assert second.url.params["attempt"] == "1"
    assert second.url.params["follow"] == "true"


def test_follow_logs_reconnects_when_stream_ends_before_attempt(client: Client, api: FakeAPI) -> None:
    running = job(status="RUNNING", attempt=1, attempts=[attempt(1, finished=False)])
    done = job(status="SUCCEEDED", attempt=1, attempts=[attempt(1)])
    # A graceful server shutdown ends the body cleanly while the attempt still runs.
    api.on("GET", "/v1/jobs/j-1", running, running, done)
    _logs_route(
        api,
        httpx.Response(200, stream=DropStream(b"abc", drop=False)),
        httpx.Response(200, stream=DropStream(b"def", drop=False)),
    )
    assert b"".join(client.follow_logs("j-1")) == b"abcdef"
    assert [r.url.params["since"] for r in api.calls("GET", "/v1/jobs/j-1/logs")] == ["0", "3"]


def test_follow_logs_moves_on_to_the_retry(client: Client, api: FakeAPI) -> None:
    first_failed = job(status="PENDING", attempt=1, attempts=[attempt(1, status="FAILED", exit_code=1)])
    second_running = job(status="RUNNING", attempt=2, attempts=[attempt(1), attempt(2, finished=False)])
    done = job(status="SUCCEEDED", attempt=2, attempts=[attempt(1), attempt(2)])
    api.on(
        "GET",
        "/v1/jobs/j-1",
        job(status="RUNNING", attempt=1, attempts=[attempt(1, finished=False)]),
        first_failed,  # after attempt 1's stream: it is over
        second_running,  # waiting for the next attempt
        done,
    )
    _logs_route(
        api,
        httpx.Response(200, stream=DropStream(b"one\n", drop=False)),
        httpx.Response(200, stream=DropStream(b"two\n", drop=False)),
    )
    seen: list[int] = []
    assert b"".join(client.follow_logs("j-1", on_attempt=seen.append)) == b"one\ntwo\n"
    assert seen == [2]
    second = api.calls("GET", "/v1/jobs/j-1/logs")[1]
    assert (second.url.params["attempt"], second.url.params["since"]) == ("2", "0")


def test_follow_pinned_attempt_stops_after_it(client: Client, api: FakeAPI) -> None:
    api.on("GET", "/v1/jobs/j-1", job(status="RUNNING", attempt=2, attempts=[attempt(1), attempt(2, False)]))
    _logs_route(api, httpx.Response(200, stream=DropStream(b"old", drop=False)))
    assert b"".join(client.follow_logs("j-1", attempt=1)) == b"old"
    assert len(api.calls("GET", "/v1/jobs/j-1/logs")) == 1


def test_follow_with_tail_reads_then_follows_from_offset(client: Client, api: FakeAPI) -> None:
    api.on("GET", "/v1/jobs/j-1", job(status="SUCCEEDED", attempt=1, attempts=[attempt(1)]))

    def logs(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("follow") == "true":
            return httpx.Response(200, content=b"more\n")
        return httpx.Response(200, headers={"X-Trainyard-Next-Offset": "100"}, content=b"last\n")

    _logs_route(api, logs)
    assert b"".join(client.follow_logs("j-1", tail=1)) == b"last\nmore\n"
    plain, follow = api.calls("GET", "/v1/jobs/j-1/logs")
    assert plain.url.params["tail"] == "1"
    assert follow.url.params["since"] == "100"
    assert "tail" not in follow.url.params


def test_follow_gives_up_after_max_reconnects(api: FakeAPI) -> None:
    c = Client(url=BASE, token="t", transport=httpx.MockTransport(api), reconnect_delay=0, max_reconnects=2)
    api.on("GET", "/v1/jobs/j-1", job(status="RUNNING", attempt=1, attempts=[attempt(1, False)]))

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    _logs_route(api, down)
    with pytest.raises(ConnectionFailed):
        list(c.follow_logs("j-1"))
    assert len(api.calls("GET", "/v1/jobs/j-1/logs")) == 3


def test_logs_returns_raw_bytes(client: Client, api: FakeAPI) -> None:
    _logs_route(api, httpx.Response(200, content=b"\xff\xfebad utf8\n"))
    assert client.logs("j-1", attempt=2, tail=5) == b"\xff\xfebad utf8\n"
    req = api.requests[-1]
    assert (req.url.params["attempt"], req.url.params["tail"]) == ("2", "5")


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        ("SUCCEEDED", 0, 0),
        ("SUCCEEDED", None, 0),
        ("FAILED", 3, 3),
        ("FAILED", None, 1),
        ("FAILED", 0, 1),
        ("FAILED", -9, 137),
        ("TIMED_OUT", None, 1),
        ("CANCELLED", None, 130),
        ("CANCELLED", -15, 143),
    ],
)
def test_job_exit_code(status: str, code: int | None, expected: int) -> None:
    assert job_exit_code({"status": status, "exit_code": code}) == expected


# -- events and wait ---------------------------------------------------------------------------


def _sse(*events: tuple[str, str]) -> bytes:
    return b"".join(f"event: {kind}\ndata: {data}\n\n".encode() for kind, data in events)


def test_follow_events_resumes_and_skips_seen(client: Client, api: FakeAPI) -> None:
    ev1 = '{"id": 1, "type": "submitted"}'
    ev2 = '{"id": 2, "type": "scheduled"}'
    api.on(
        "GET",
        "/v1/jobs/j-1/events",
        httpx.Response(200, stream=DropStream(b": keepalive\n\n" + _sse(("job_event", ev1)))),
        httpx.Response(200, content=_sse(("job_event", ev1), ("job_event", ev2), ("end", "{}"))),
    )
    assert [e["id"] for e in client.follow_events("j-1")] == [1, 2]
    second = api.calls("GET", "/v1/jobs/j-1/events")[1]
    assert second.headers["Last-Event-ID"] == "1"


def test_wait_polls_until_terminal(client: Client, api: FakeAPI) -> None:
    api.on("GET", "/v1/jobs/j-1", job(status="PENDING"), job(status="RUNNING"), job(status="FAILED"))
    assert client.wait("j-1")["status"] == "FAILED"
    assert len(api.calls("GET", "/v1/jobs/j-1")) == 3


def test_wait_times_out(client: Client, api: FakeAPI) -> None:
    api.on("GET", "/v1/jobs/j-1", job(status="RUNNING"))
    with pytest.raises(TimeoutError):
        client.wait("j-1", timeout=0.05)


# -- artifacts ---------------------------------------------------------------------------------


def _artifact(path: str, data: bytes, sha: str | None = None) -> dict[str, object]:
    return {
        "path": path,
        "size": len(data),
        "sha256": sha or hashlib.sha256(data).hexdigest(),
        "attempt": 1,
        "url": f"http://objects.test/bucket/{path}?sig=abc",
    }


def test_download_verifies_and_skips_auth_on_presigned(client: Client, api: FakeAPI, tmp_path: Path) -> None:
    files = {"model.pt": b"weights" * 1000, "out/metrics.json": b'{"acc": 0.9}'}
    api.on("GET", "/v1/jobs/j-1/artifacts", {"artifacts": [_artifact(p, d) for p, d in files.items()]})
    for path, data in files.items():
        api.on("GET", f"/bucket/{path}", httpx.Response(200, content=data))
    written = client.download_artifacts("j-1", tmp_path / "dl")
    assert written == [tmp_path / "dl" / "model.pt", tmp_path / "dl" / "out" / "metrics.json"]
    for path, data in files.items():
        assert (tmp_path / "dl" / path).read_bytes() == data
    presigned = [r for r in api.requests if r.url.host == "objects.test"]
    assert len(presigned) == 2
    assert all("Authorization" not in r.headers for r in presigned)
    assert api.calls("GET", "/v1/jobs/j-1/artifacts")[0].headers["Authorization"] == "Bearer tok"


def test_download_mismatch_deletes_file(client: Client, api: FakeAPI, tmp_path: Path) -> None:
    art = _artifact("model.pt", b"good bytes")
    api.on("GET", "/v1/jobs/j-1/artifacts", {"artifacts": [art]})
    api.on("GET", "/bucket/model.pt", httpx.Response(200, content=b"evil bytes"))
    with pytest.raises(IntegrityError, match="sha256"):
        client.download_artifacts("j-1", tmp_path)
    assert not (tmp_path / "model.pt").exists()
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("bad", ["../escape.txt", "/etc/passwd", "a/../../escape.txt", "a\\..\\x"])
def test_download_refuses_escaping_paths(client: Client, api: FakeAPI, tmp_path: Path, bad: str) -> None:
    dest = tmp_path / "dest"
    api.on("GET", "/v1/jobs/j-1/artifacts", {"artifacts": [_artifact("ok.txt", b"ok"), _artifact(bad, b"x")]})
    api.on("GET", "/bucket/ok.txt", httpx.Response(200, content=b"ok"))
    with pytest.raises(IntegrityError, match="escape"):
        client.download_artifacts("j-1", dest)
    assert not (tmp_path / "escape.txt").exists()
    assert not (dest / "ok.txt").exists()  # refused before anything was written


def test_download_refuses_escape_through_symlink(client: Client, api: FakeAPI, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "link").symlink_to(outside)
    api.on("GET", "/v1/jobs/j-1/artifacts", {"artifacts": [_artifact("link/x.txt", b"x")]})
    with pytest.raises(IntegrityError):
        client.download_artifacts("j-1", dest)
    assert not (outside / "x.txt").exists()


def test_expired_presigned_url_falls_back_to_api(client: Client, api: FakeAPI, tmp_path: Path) -> None:
    data = b"payload"
    api.on("GET", "/v1/jobs/j-1/artifacts", {"artifacts": [_artifact("dir/a b.bin", data)]})
    api.on("GET", "/bucket/dir/a b.bin", httpx.Response(403, text="expired"))
    api.on("GET", "/v1/jobs/j-1/artifacts/dir/a b.bin", httpx.Response(200, content=data))
    client.download_artifacts("j-1", tmp_path)
    assert (tmp_path / "dir" / "a b.bin").read_bytes() == data


# -- workdir, admin ----------------------------------------------------------------------------


def test_upload_workdir_posts_gzip(client: Client, api: FakeAPI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text("print(1)\n")
    api.on("POST", "/v1/workdirs", httpx.Response(201, json={"workdir": "wd-abc", "sha256": "x", "size": 1}))
    assert client.upload_workdir(src) == "wd-abc"
    req = api.requests[-1]
    assert req.headers["Content-Type"] == "application/gzip"
    assert req.content[:2] == b"\x1f\x8b"


def test_create_user_returns_token(client: Client, api: FakeAPI) -> None:
    api.on(
        "POST",
        "/v1/admin/users",
        httpx.Response(201, json={"name": "bob", "team": "nlp", "role": "admin", "token": "ty_secret"}),
    )
    assert client.create_user("bob", "nlp", role="admin") == "ty_secret"
    assert api.body(api.requests[-1]) == {"name": "bob", "team": "nlp", "role": "admin"}
