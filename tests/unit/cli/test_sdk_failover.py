"""Client-side failover between control-plane replicas: a list of URLs, the one that works kept, and
nothing that may have reached a server sent again unless it is a read or carries an idempotency key."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from typer.testing import CliRunner
from yard_fake import DropStream, FakeAPI, attempt, error, job

from trainyard.cli.main import State, app
from trainyard.client.endpoints import Endpoints, fails_over, parse_urls, resendable
from trainyard.client.sdk import Client, ConnectionFailed, TrainyardError

A, B = "http://a.test:8080", "http://b.test:8081"


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def reset(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadError("connection reset by peer", request=request)


class Replicas:
    """One FakeAPI per replica host, behind one MockTransport; a host in ``down`` refuses connections."""

    def __init__(self) -> None:
        self.a, self.b = FakeAPI(), FakeAPI()
        self.down: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host in self.down:
            return refused(request)
        return (self.a if request.url.host == "a.test" else self.b)(request)

    def client(self, urls: str = f"{A},{B}", **kw: float) -> Client:
        return Client(url=urls, token="t", transport=httpx.MockTransport(self), reconnect_delay=0, **kw)


@pytest.fixture
def rep() -> Replicas:
    return Replicas()


# -- the list ----------------------------------------------------------------------------------


def test_parse_urls_keeps_order_and_drops_slashes_and_repeats() -> None:
    assert parse_urls(" http://a:1/ , https://b/prefix/,http://a:1") == ("http://a:1", "https://b/prefix")
    assert parse_urls("http://[::1]:8080") == ("http://[::1]:8080",)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("http://a:1,ftp://b", "'ftp://b': the scheme must be http or https"),
        ("http://a:1,b:8080", "'b:8080': the scheme must be http or https"),
        ("http://a:1,,http://b", "empty entry"),
        ("http://", "no host"),
        ("http://a:port", "'http://a:port' is not a URL"),
    ],
)
def test_bad_list_is_a_value_error_naming_the_entry(raw: str, says: str) -> None:
    with pytest.raises(ValueError, match="bad control-plane URL in the url argument") as info:
        Client(url=raw)
    assert says in str(info.value)


def test_bad_list_from_the_environment_says_where(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINYARD_URL", "http://ok:1,nope")
    with pytest.raises(ValueError, match="in TRAINYARD_URL: 'nope'"):
        Client()


def test_one_url_is_as_before(rep: Replicas) -> None:
    c = rep.client(A + "/")
    assert (c.url, c.urls) == (A, (A,))
    rep.b.on("GET", "/v1/jobs/j-1", job())
    rep.down.add("a.test")
    with pytest.raises(ConnectionFailed, match=f"cannot reach the Trainyard server at {A}: "):
        c.get("j-1")
    assert not rep.b.requests


def test_endpoints_move_on_only_from_the_url_that_failed() -> None:
    e = Endpoints(("a", "b", "c"))
    assert e.order() == ["a", "b", "c"]
    e.failed("a")
    e.failed("a")  # a second thread's failure on the same replica skips no further
    assert (e.current, e.order()) == ("b", ["b", "c", "a"])
    e.failed("c")
    assert e.current == "b"
    e.succeeded("a")
    assert e.current == "a"


def test_what_may_be_sent_again() -> None:
    req = httpx.Request("POST", A)
    connect, broken = httpx.ConnectError("x", request=req), httpx.ReadError("x", request=req)
    assert resendable("GET", None) and resendable("post", {"idempotency-key": "k"})
    assert not resendable("POST", {}) and not resendable("DELETE", None) and not resendable("PUT", None)
    assert fails_over(connect, False) and fails_over(httpx.ConnectTimeout("x", request=req), False)
    assert not fails_over(broken, False) and fails_over(broken, True)
    assert not fails_over(httpx.PoolTimeout("x", request=req), True)


# -- requests ----------------------------------------------------------------------------------


def test_first_down_second_used_and_remembered(rep: Replicas) -> None:
    rep.down.add("a.test")
    rep.b.on("GET", "/v1/jobs/j-1", job())
    c = rep.client()
    assert (c.url, c.urls) == (A, (A, B))
    assert c.get("j-1")["id"] == "j-1"
    assert c.url == B
    rep.down.clear()  # a is back, but b keeps answering: the client stays there
    rep.a.on("GET", "/v1/jobs/j-1", job())
    c.get("j-1")
    assert len(rep.b.requests) == 2 and not rep.a.requests


def test_returns_to_the_first_when_the_second_fails(rep: Replicas) -> None:
    rep.down.add("a.test")
    rep.a.on("GET", "/v1/queues", {"pools": []})
    rep.b.on("GET", "/v1/queues", {"pools": []})
    c = rep.client()
    c.queues()
    rep.down = {"b.test"}
    c.queues()
    assert c.url == A


def test_503_on_first_goes_to_second(rep: Replicas) -> None:
    rep.a.on("GET", "/v1/jobs/j-1", error(503, "unavailable", "database unavailable"))
    rep.b.on("GET", "/v1/jobs/j-1", job())
    c = rep.client()
    assert c.get("j-1")["id"] == "j-1"
    assert c.url == B


def test_a_read_whose_connection_broke_goes_to_the_next(rep: Replicas) -> None:
    rep.a.on("GET", "/v1/workers", reset)
    rep.b.on("GET", "/v1/workers", {"workers": [{"id": "w-1"}]})
    assert rep.client().workers() == [{"id": "w-1"}]


def test_all_down_names_every_url(rep: Replicas) -> None:
    rep.down.update({"a.test", "b.test"})
    with pytest.raises(ConnectionFailed) as info:
        rep.client().get("j-1")
    assert info.value.message.startswith("cannot reach any Trainyard server: ")
    assert A in info.value.message and B in info.value.message


def test_last_gateway_error_is_reported(rep: Replicas) -> None:
    for api in (rep.a, rep.b):
        api.on("GET", "/v1/jobs/j-1", error(503, "unavailable", "database unavailable"))
    with pytest.raises(TrainyardError) as info:
        rep.client().get("j-1")
    assert info.value.status == 503


# -- submits -----------------------------------------------------------------------------------


def test_unkeyed_post_that_reached_a_server_is_not_resent(rep: Replicas) -> None:
    rep.a.on("POST", "/v1/jobs", reset)
    rep.b.on("POST", "/v1/jobs", httpx.Response(201, json=job("j-2")))
    c = rep.client()
    with pytest.raises(ConnectionFailed):
        c.submit({"command": ["true"]})
    assert not rep.b.requests
    # Nor is one answered 503: the first replica may have accepted it before failing.
    rep.a.on("POST", "/v1/jobs", error(503, "unavailable", "try later"))
    with pytest.raises(TrainyardError) as info:
        c.submit({"command": ["true"]})
    assert info.value.status == 503 and not rep.b.requests


def test_unkeyed_post_that_never_connected_goes_to_the_next(rep: Replicas) -> None:
    rep.down.add("a.test")
    rep.b.on("POST", "/v1/jobs", httpx.Response(201, json=job("j-2")))
    assert rep.client().submit({"command": ["true"]})["id"] == "j-2"
    assert len(rep.b.calls("POST", "/v1/jobs")) == 1


def test_keyed_post_is_resent_to_the_next_with_the_same_key(rep: Replicas) -> None:
    rep.a.on("POST", "/v1/jobs", reset)
    rep.b.on("POST", "/v1/jobs", httpx.Response(200, json=job("j-3")))
    assert rep.client().submit({"command": ["true"]}, idempotency_key="k-7")["id"] == "j-3"
    sent = [*rep.a.calls("POST", "/v1/jobs"), *rep.b.calls("POST", "/v1/jobs")]
    assert [r.headers["Idempotency-Key"] for r in sent] == ["k-7", "k-7"]


# -- streams -----------------------------------------------------------------------------------


def test_follow_events_reconnects_to_the_next_with_last_event_id(rep: Replicas) -> None:
    ev = [json.dumps({"id": n, "type": "x"}) for n in (1, 2)]
    sse = [f"event: job_event\ndata: {e}\n\n".encode() for e in ev]
    rep.a.on("GET", "/v1/jobs/j-1/events", httpx.Response(200, stream=DropStream(sse[0])))
    rep.b.on("GET", "/v1/jobs/j-1/events", httpx.Response(200, content=sse[1] + b"event: end\ndata: {}\n\n"))
    c = rep.client()
    assert [e["id"] for e in c.follow_events("j-1")] == [1, 2]
    (second,) = rep.b.calls("GET", "/v1/jobs/j-1/events")
    assert second.headers["Last-Event-ID"] == "1"
    assert c.url == B


def test_follow_logs_reconnects_to_the_next_from_its_offset(rep: Replicas) -> None:
    running = job(status="RUNNING", attempt=1, attempts=[attempt(1, finished=False)])
    done = job(status="SUCCEEDED", attempt=1, attempts=[attempt(1)])
    rep.a.on("GET", "/v1/jobs/j-1", running)
    rep.a.on("GET", "/v1/jobs/j-1/logs", httpx.Response(200, stream=DropStream(b"hello ")))
    rep.b.on("GET", "/v1/jobs/j-1", done)
    rep.b.on("GET", "/v1/jobs/j-1/logs", httpx.Response(200, stream=DropStream(b"world\n", drop=False)))
    assert b"".join(rep.client().follow_logs("j-1")) == b"hello world\n"
    (resumed,) = rep.b.calls("GET", "/v1/jobs/j-1/logs")
    assert resumed.url.params["since"] == "6"


def test_streams_give_up_after_max_reconnects_rounds(rep: Replicas) -> None:
    rep.down.update({"a.test", "b.test"})
    with pytest.raises(ConnectionFailed):
        list(rep.client(max_reconnects=2).all_events())
    assert len(rep.a.requests) + len(rep.b.requests) == 0  # refused before any handler ran


# -- the CLI -----------------------------------------------------------------------------------


class _JobHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(job("j-1", status="RUNNING")).encode()
        self.send_response(200 if self.path == "/v1/jobs/j-1" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JobHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_cli_with_a_dead_url_first_uses_the_live_one(server_port: int) -> None:
    urls = f"http://127.0.0.1:1,http://127.0.0.1:{server_port}"
    res = CliRunner().invoke(app, ["--url", urls, "get", "j-1", "-o", "json"], obj=State())
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["id"] == "j-1"


def test_cli_bad_url_list_exits_2_without_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    res = CliRunner().invoke(app, ["--url", "http://127.0.0.1:1,ftp://x", "get", "j-1"], obj=State())
    assert res.exit_code == 2
    assert "'ftp://x': the scheme must be http or https" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    monkeypatch.setenv("TRAINYARD_URL", "http://127.0.0.1:1,,")
    res = CliRunner().invoke(app, ["get", "j-1"], obj=State())
    assert res.exit_code == 2
    assert "error: bad control-plane URL in TRAINYARD_URL: empty entry" in res.output
