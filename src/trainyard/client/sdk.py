"""The Python SDK: a small synchronous client over Trainyard's REST API (v1).

Every method returns the server's JSON as plain dicts. Failures raise :class:`TrainyardError`
(or one of its subclasses) carrying the server's error code, message and field-level details.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, TypeAlias
from urllib.parse import quote, urljoin

import httpx

from trainyard import __version__
from trainyard.client.bundle import make_bundle
from trainyard.client.endpoints import GATEWAY_STATUS, Endpoints, fails_over, resendable
from trainyard.client.errors import (
    Conflict,
    ConnectionFailed,
    Forbidden,
    IntegrityError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    TrainyardError,
    Unauthorized,
    ValidationFailed,
    error_from,
    job_exit_code,
    spec_error,
    validate_spec,
)
from trainyard.model.spec import JobSpec
from trainyard.model.states import TERMINAL

# The errors and the spec check live in client/errors.py; they stay importable from here.
__all__ = [
    "DEFAULT_HOME",
    "DEFAULT_URL",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "IntegrityError",
    "Job",
    "JobPage",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "Records",
    "TrainyardError",
    "Unauthorized",
    "ValidationFailed",
    "job_exit_code",
    "new_idempotency_key",
    "spec_error",
    "validate_spec",
]

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_HOME = ".trainyard"

Job: TypeAlias = dict[str, Any]
Records: TypeAlias = list[dict[str, Any]]
JobPage: TypeAlias = tuple[list[dict[str, Any]], str | None]
_Paths: TypeAlias = list[Path]
_Statuses: TypeAlias = str | list[str] | tuple[str, ...] | None
_Params: TypeAlias = list[tuple[str, str | int]]

_TRANSIENT_STATUS = GATEWAY_STATUS
_CHUNK = 1024 * 1024


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, str | None, str]]:
    """(event, id, data) triples from a text/event-stream body."""
    event, eid = "message", None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield event, eid, "\n".join(data)
            event, eid, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            eid = value
    if data:
        yield event, eid, "\n".join(data)


class Client:
    """A connection to a Trainyard control plane.

    Configuration, first match wins: the arguments; ``TRAINYARD_URL`` / ``TRAINYARD_TOKEN``; the
    files ``url`` and ``token`` in ``home`` (``TRAINYARD_HOME``, default ``./.trainyard``, where
    `yard up` writes them); ``http://127.0.0.1:8080``. ``transport`` replaces the network, for tests.

    The URL may be a comma-separated list of replicas (the first preferred): a request that cannot
    connect, or a read that gets 502/503/504 or loses its connection, goes to the next one, which is
    then kept (``url`` is the one in use, ``urls`` all). A bad list raises ValueError.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        home: str | os.PathLike[str] | None = None,
        timeout: float = 30,
        *,
        transport: httpx.BaseTransport | None = None,
        reconnect_delay: float = 1.0,
        max_reconnects: int = 30,
        poll_interval: float = 1.0,
    ) -> None:
        self.home = Path(home or os.environ.get("TRAINYARD_HOME") or DEFAULT_HOME)
        self._endpoints = Endpoints.first_of(
            ("the url argument", url),
            ("TRAINYARD_URL", os.environ.get("TRAINYARD_URL")),
            (str(self.home / "url"), self._home_file("url")),
            ("the default", DEFAULT_URL),
        )
        self.token = token or os.environ.get("TRAINYARD_TOKEN") or self._home_file("token")
        self.timeout = timeout
        self.reconnect_delay = reconnect_delay
        self.max_reconnects = max_reconnects
        self.poll_interval = poll_interval
        headers = {"User-Agent": f"trainyard/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        # No base_url: each request names the replica it goes to (one pool serves them all).
        self._http = httpx.Client(
            headers=headers, timeout=timeout, transport=transport, follow_redirects=True
        )
        # Presigned URLs carry their own signature; our bearer token must not leak to object storage.
        self._bare = httpx.Client(
            headers={"User-Agent": headers["User-Agent"]},
            timeout=timeout,
            transport=transport,
            follow_redirects=True,
        )

    @property
    def url(self) -> str:
        """The base URL in use: the one that last answered."""
        return self._endpoints.current

    @property
    def urls(self) -> tuple[str, ...]:
        """Every configured base URL, in the order given."""
        return self._endpoints.urls

    def _home_file(self, name: str) -> str | None:
        try:
            text = (self.home / name).read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return text or None

    def close(self) -> None:
        self._http.close()
        self._bare.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _fail(self, resp: httpx.Response) -> TrainyardError:
        err = error_from(resp)
        if isinstance(err, Unauthorized) and not self.token:
            err.message += (
                " (no token configured: set TRAINYARD_TOKEN or write it to "
                f"{self.home / 'token'}; `yard up` does this for you)"
            )
        return err

    def _unreachable(
        self, exc: httpx.TransportError, url: str | None = None, tried: list[str] | None = None
    ) -> ConnectionFailed:
        why = f"{exc or type(exc).__name__}"
        if tried:
            failed = "; ".join([*tried, f"{url}: {why}"])
            return ConnectionFailed(0, "unreachable", f"cannot reach any Trainyard server: {failed}")
        return ConnectionFailed(
            0, "unreachable", f"cannot reach the Trainyard server at {url or self.url}: {why}"
        )

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        may_resend = resendable(method, kw.get("headers"))
        order = self._endpoints.order()
        tried: list[str] = []
        for base in order:
            last = len(tried) == len(order) - 1
            try:
                resp = self._http.request(method, base + path, **kw)
            except httpx.TransportError as exc:
                if last or not fails_over(exc, may_resend):
                    raise self._unreachable(exc, base, tried) from exc
                self._endpoints.failed(base)
                tried.append(f"{base}: {exc or type(exc).__name__}")
                continue
            if resp.status_code in GATEWAY_STATUS and may_resend and not last:
                self._endpoints.failed(base)
                tried.append(f"{base}: HTTP {resp.status_code}")
                continue
            self._endpoints.succeeded(base)
            if resp.status_code >= 400:
                raise self._fail(resp)
            return resp
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        body = self._request(method, path, **kw).json()
        if not isinstance(body, dict):
            raise TrainyardError(0, "bad_response", f"{method} {path}: expected a JSON object")
        return body

    @staticmethod
    def _job_path(job_id: str, suffix: str = "") -> str:
        return f"/v1/jobs/{quote(job_id, safe='')}{suffix}"

    # -- jobs -----------------------------------------------------------------------------------

    def submit(self, spec: JobSpec | Mapping[str, Any], idempotency_key: str | None = None) -> Job:
        """Submit a job; with an ``idempotency_key`` a repeat returns the same job instead of a new one."""
        checked = validate_spec(spec)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        # Only the fields the caller set travel, so the server's defaults (team, say) apply.
        body = checked.model_dump(mode="json", exclude_unset=True)
        tries = 4 if idempotency_key else 1
        for n in range(1, tries + 1):
            try:
                return self._json("POST", "/v1/jobs", json=body, headers=headers)
            except ConnectionFailed as exc:
                # Only a keyed submit may be resent (a replay gets the same job), and only when the
                # request may have reached the server; a refused connection is reported at once.
                if n == tries or isinstance(exc.__cause__, httpx.ConnectError):
                    raise
                time.sleep(self.reconnect_delay * n)
        raise AssertionError("unreachable")

    def get(self, job_id: str) -> Job:
        return self._json("GET", self._job_path(job_id))

    def list(
        self,
        status: _Statuses = None,
        user: str | None = None,
        team: str | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of jobs, newest first, and the cursor of the next page (None at the end)."""
        params: _Params = [("limit", limit)]
        statuses = [status] if isinstance(status, str) else list(status or [])
        params += [("status", s) for s in statuses]
        for key, value in (("user", user), ("team", team), ("name", name), ("cursor", cursor)):
            if value:
                params.append((key, value))
        body = self._json("GET", "/v1/jobs", params=params)
        return list(body.get("jobs") or []), body.get("next_cursor") or None

    def iter_jobs(
        self,
        status: _Statuses = None,
        user: str | None = None,
        team: str | None = None,
        name: str | None = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Every matching job, newest first, fetching pages as needed."""
        cursor: str | None = None
        while True:
            jobs, cursor = self.list(status, user, team, name, page_size, cursor)
            yield from jobs
            if not cursor or not jobs:
                return

    def tasks(
        self,
        job_id: str,
        status: _Statuses = None,
        limit: int = 100,
        cursor: str | None = None,
        metric: str | None = None,
        best: str = "min",
    ) -> JobPage:
        """One page of an array's tasks by index, and the next page's cursor; with ``metric``, each
        task's ``best`` (``min`` or ``max``) value of it."""
        params: _Params = [("limit", limit), ("best", best)]
        statuses = [status] if isinstance(status, str) else list(status or [])
        params += [("status", s) for s in statuses]
        for key, value in (("cursor", cursor), ("metric", metric)):
            if value:
                params.append((key, value))
        body = self._json("GET", self._job_path(job_id, "/tasks"), params=params)
        return list(body.get("tasks") or []), body.get("next_cursor") or None

    def iter_tasks(self, job_id: str, status: _Statuses = None, **kw: Any) -> Iterator[Job]:
        """Every task of an array (of ``status``), by index, fetching pages as needed."""
        cursor: str | None = None
        while True:
            tasks, cursor = self.tasks(job_id, status, cursor=cursor, **kw)
            yield from tasks
            if not cursor or not tasks:
                return

    def cancel(self, job_id: str) -> Job:
        """Ask for the job to stop (an array: every task not finished); idempotent, and a finished
        job stays as it was."""
        return self._json("DELETE", self._job_path(job_id))

    def restart(self, job_id: str) -> Job:
        """Run a finished job again as a new attempt."""
        return self._json("POST", self._job_path(job_id, "/restart"))

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Poll until the job reaches a terminal state; TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(0.2, self.poll_interval)
        while True:
            job = self.get(job_id)
            if job.get("status") in TERMINAL:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.get('status')} after {timeout:g}s")
            pause = delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic()))
            time.sleep(pause)
            delay = min(delay * 2, max(self.poll_interval, 0.2) * 5)

    # -- events ---------------------------------------------------------------------------------

    def events(self, job_id: str) -> Records:
        """The job's state history, oldest first."""
        return list(self._json("GET", self._job_path(job_id, "/events")).get("events") or [])

    def follow_events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """The job's events as they happen (history first); ends when the job is terminal.

        A dropped stream is reopened with ``Last-Event-ID``; events already seen are skipped by
        their id, so a server that replays from the start is handled too.
        """
        return self._follow_sse(self._job_path(job_id, "/events"), {"follow": "true"})

    def all_events(self) -> Iterator[dict[str, Any]]:
        """Every job event the caller may see, as it happens (runs until the caller stops)."""
        return self._follow_sse("/v1/events", {})

    def _follow_sse(self, path: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        last_id: int | None = None
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = str(last_id)
            base = self.url
            try:
                with self._http.stream(
                    "GET", base + path, params=params, headers=headers, timeout=None
                ) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        if resp.status_code not in _TRANSIENT_STATUS:
                            raise self._fail(resp)
                        raise httpx.RemoteProtocolError(f"HTTP {resp.status_code}")
                    for kind, eid, data in _sse(resp.iter_lines()):
                        if kind == "end":
                            return
                        if kind not in ("job_event", "message"):
                            continue
                        event = json.loads(data)
                        num = event.get("id") if isinstance(event, dict) else None
                        if num is None and eid is not None and eid.isdigit():
                            num = int(eid)
                        if isinstance(num, int):
                            if last_id is not None and num <= last_id:
                                continue
                            last_id = num
                        failures = 0
                        yield event
            except httpx.TransportError as exc:
                failures += 1
                self._pause_before_reconnect(failures, self._unreachable(exc, base), base)
                continue
            # A clean end without `event: end` means the server went away gracefully: reopen.
            failures += 1
            self._pause_before_reconnect(
                failures, ConnectionFailed(0, "stream_ended", f"event stream {path} keeps ending early"), base
            )

    def _pause_before_reconnect(self, failures: int, give_up: TrainyardError, base: str) -> None:
        """Reopen a dropped stream on the next URL, backing off once each round of them has failed;
        raise ``give_up`` after ``max_reconnects`` rounds in a row."""
        self._endpoints.failed(base)
        rounds, rest = divmod(failures, len(self.urls))
        if failures > self.max_reconnects * len(self.urls):
            raise give_up
        if not rest:
            time.sleep(self.reconnect_delay * min(rounds, 5))

    # -- logs -----------------------------------------------------------------------------------

    def logs(self, job_id: str, attempt: int | None = None, since: int = 0, tail: int | None = None) -> bytes:
        """The output logged so far (latest attempt by default), as raw bytes."""
        params: dict[str, int] = {}
        if attempt is not None:
            params["attempt"] = attempt
        if since:
            params["since"] = since
        if tail is not None:
            params["tail"] = tail
        return self._request("GET", self._job_path(job_id, "/logs"), params=params).content

    def search_logs(
        self,
        q: str,
        *,
        team: str | None = None,
        since: str | None = None,
        job: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of log lines holding the phrase ``q`` in the jobs you may see, newest first:
        ``{"hits": [{job_id, attempt, offset, team, time, line}], "next_cursor": ...}``. ``since``:
        a duration back from now, such as ``1d``."""
        params: dict[str, str | int] = {"q": q, "limit": limit}
        for name, value in (("team", team), ("since", since), ("job", job), ("cursor", cursor)):
            if value is not None:
                params[name] = value
        return self._json("GET", "/v1/logs/search", params=params)

    def follow_logs(
        self,
        job_id: str,
        attempt: int | None = None,
        since: int = 0,
        *,
        tail: int | None = None,
        on_attempt: Callable[[int], None] | None = None,
    ) -> Iterator[bytes]:
        """Live output until the attempt ends, reconnecting from the last byte received.

        With ``attempt=None`` it follows the latest attempt and then each retry in turn until the
        job is terminal; ``on_attempt(n)`` is called when it moves on to attempt ``n``.
        """
        path = self._job_path(job_id, "/logs")
        pinned = attempt is not None
        current = attempt
        received = since
        failures = 0
        if current is None:
            current = self._await_attempt(job_id, 0)
            if current is None:
                # Terminal without ever running: whatever the server holds is all there is.
                yield self.logs(job_id, tail=tail)
                return
        if tail is not None:
            # Byte offsets are only known for a plain read, so the tail is read first and followed after.
            resp = self._request("GET", path, params={"attempt": current, "tail": tail})
            offset = resp.headers.get("X-Trainyard-Next-Offset", "")
            if offset.isdigit():
                received = int(offset)
                if resp.content:
                    yield resp.content
        while True:
            params: dict[str, int | str] = {"follow": "true", "attempt": current, "since": received}
            base = self.url
            try:
                with self._http.stream("GET", base + path, params=params, timeout=None) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        if resp.status_code not in _TRANSIENT_STATUS:
                            raise self._fail(resp)
                        raise httpx.RemoteProtocolError(f"HTTP {resp.status_code}")
                    for chunk in resp.iter_bytes():
                        if chunk:
                            received += len(chunk)
                            failures = 0
                            yield chunk
            except httpx.TransportError as exc:
                failures += 1
                self._pause_before_reconnect(failures, self._unreachable(exc, base), base)
                continue

            job = self.get(job_id)
            if not self._attempt_over(job, current):
                # The stream ended but the attempt did not: the server restarted or closed early.
                failures += 1
                self._pause_before_reconnect(
                    failures,
                    ConnectionFailed(0, "stream_ended", f"log stream of job {job_id} keeps ending early"),
                    base,
                )
                continue
            if pinned:
                return
            nxt = self._await_attempt(job_id, current, job)
            if nxt is None:
                return
            current, received, failures = nxt, 0, 0
            if on_attempt is not None:
                on_attempt(current)

    @staticmethod
    def _attempt_over(job: Mapping[str, Any], number: int) -> bool:
        if job.get("status") in TERMINAL:
            return True
        for att in job.get("attempts") or []:
            if att.get("number") == number:
                return att.get("finished_at") is not None
        # The attempt is not listed (pruned, or a server that omits attempts): trust the job counter.
        return int(job.get("attempt") or 0) > number

    def _await_attempt(self, job_id: str, after: int, job: Job | None = None) -> int | None:
        """The number of the first attempt after ``after`` once it exists; None if the job ends first."""
        while True:
            if job is None:
                job = self.get(job_id)
            number = int(job.get("attempt") or 0)
            if number > after:
                return number
            if job.get("status") in TERMINAL:
                return None
            job = None
            time.sleep(self.poll_interval)

    # -- artifacts ------------------------------------------------------------------------------

    def artifacts(self, job_id: str, attempt: int | None = None) -> Records:
        """The job's artifacts: path, size, sha256, attempt and a short-lived download url."""
        params = {"attempt": attempt} if attempt is not None else {}
        return list(
            self._json("GET", self._job_path(job_id, "/artifacts"), params=params).get("artifacts") or []
        )

    def download_artifacts(
        self, job_id: str, dest_dir: str | os.PathLike[str], attempt: int | None = None
    ) -> _Paths:
        """Download every artifact under ``dest_dir``, checking each against its listed sha256.

        A file whose bytes do not match is deleted and IntegrityError raised. Paths that would land
        outside ``dest_dir`` are refused before anything is written.
        """
        dest = Path(dest_dir)
        items = self.artifacts(job_id, attempt)
        targets = [_safe_target(dest, str(item.get("path", ""))) for item in items]
        written: _Paths = []
        for item, target in zip(items, targets, strict=True):
            self._download_one(job_id, item, target)
            written.append(target)
        return written

    def _download_one(self, job_id: str, item: Mapping[str, Any], target: Path) -> None:
        rel = str(item["path"])
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        size = 0
        try:
            with part.open("wb") as fh:
                for chunk in self._artifact_stream(job_id, item):
                    digest.update(chunk)
                    size += len(chunk)
                    fh.write(chunk)
            want_sha = item.get("sha256")
            want_size = item.get("size")
            if want_sha and digest.hexdigest() != str(want_sha).lower():
                raise IntegrityError(
                    0,
                    "checksum_mismatch",
                    f"artifact {rel}: sha256 {digest.hexdigest()} does not match the listed {want_sha}",
                )
            if isinstance(want_size, int) and size != want_size:
                raise IntegrityError(
                    0, "size_mismatch", f"artifact {rel}: got {size} bytes, the server listed {want_size}"
                )
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)

    def _artifact_stream(self, job_id: str, item: Mapping[str, Any]) -> Iterator[bytes]:
        rel = str(item["path"])
        api_path = self._job_path(job_id, "/artifacts/" + quote(rel, safe="/"))
        url = item.get("url")
        if url:
            full = urljoin(self.url + "/", str(url))
            try:
                with self._bare.stream("GET", full) as resp:
                    if resp.status_code < 400:
                        yield from resp.iter_bytes(_CHUNK)
                        return
                    resp.read()
                    # An expired presigned URL is not fatal: the API path signs a fresh one.
                    if resp.status_code not in (401, 403):
                        raise self._fail(resp)
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from exc
        try:
            with self._http.stream("GET", self.url + api_path) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise self._fail(resp)
                yield from resp.iter_bytes(_CHUNK)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    # -- workdirs, fleet, admin -----------------------------------------------------------------

    def upload_workdir(self, path: str | os.PathLike[str], limit_bytes: int | None = None) -> str:
        """Bundle a directory, upload it, and return the key to put in ``JobSpec.workdir``."""
        data = make_bundle(Path(path), limit_bytes)
        body = self._json(
            "POST", "/v1/workdirs", content=data, headers={"Content-Type": "application/gzip"}, timeout=None
        )
        return str(body["workdir"])

    def workers(self) -> Records:
        return list(self._json("GET", "/v1/workers").get("workers") or [])

    def queues(self) -> dict[str, Any]:
        """Pending and running counts per pool, and per-team use."""
        return self._json("GET", "/v1/queues")

    # -- budgets and usage ---------------------------------------------------------------------

    def usage(
        self, team: str | None = None, by: str | None = None, since: str | None = None
    ) -> dict[str, Any]:
        """GPU-hours, cost and what spot saved since ``since`` (``30d``, ``month``, ``2026-11-01``;
        default: this month), grouped ``by`` (``user,gpu-type``; also ``team``, ``spot``), for your
        team (admins: ``team`` or all); with each team's monthly budget and what it spent of it."""
        params = {k: v for k, v in (("team", team), ("by", by), ("since", since)) if v is not None}
        return self._json("GET", "/v1/usage", params=params)

    def prices(self) -> dict[str, Any]:
        """The price table: per GPU-hour by type, per core-hour, per GiB-hour, the spot discount."""
        return self._json("GET", "/v1/prices")

    def set_prices(self, prices: dict[str, Any]) -> dict[str, Any]:
        """Replace the price table (admin), in dollars: ``{"gpu_hour": {"a100": "2.48"},
        "cpu_hour": "0.04", "gib_hour": "0.005", "spot_discount": "60%"}``."""
        return self._json("PUT", "/v1/admin/prices", json=prices)

    def allow_over_budget(self, job_id: str) -> dict[str, Any]:
        """Let one job (an array: all its tasks) start although its team is over its monthly
        budget (admin)."""
        return self._json("POST", f"/v1/admin/jobs/{quote(job_id, safe='')}/allow-over-budget")

    def teams(self) -> Records:
        """Every team with its fair-share weight and quotas."""
        teams: Records = self._json("GET", "/v1/teams")["teams"]
        return teams

    def set_team(self, name: str, **changes: Any) -> dict[str, Any]:
        """Create or change a team (admin only): weight, cpu_quota, memory_quota, gpu_quota,
        gpu_type_quotas, monthly_budget ("5000/month"); a quota or budget given as None removes
        that limit."""
        return self._json("PUT", f"/v1/admin/teams/{quote(name, safe='')}", json=changes)

    def create_user(self, name: str, team: str, role: str = "user", tier: str | None = None) -> str:
        """Create a user and return their API token (admins; team admins for their own team).
        ``role``: viewer, user, team-admin or admin; ``tier`` picks the submission limit."""
        req: dict[str, Any] = {"name": name, "team": team, "role": role}
        if tier is not None:
            req["tier"] = tier
        body = self._json("POST", "/v1/admin/users", json=req)
        return str(body["token"])

    # -- tokens, audit, secrets ------------------------------------------------------------------

    def create_token(
        self, user: str | None = None, expires_in: str | float | None = None, description: str | None = None
    ) -> dict[str, Any]:
        """A new API token (yours unless ``user``: team admins for their team, admins for anyone);
        the result's ``token`` is shown this once. ``expires_in`` e.g. ``"30d"``; None: no expiry."""
        req: dict[str, Any] = {}
        if user is not None:
            req["user"] = user
        if expires_in is not None:
            req["expires_in"] = expires_in
        if description is not None:
            req["description"] = description
        return self._json("POST", "/v1/admin/tokens", json=req)

    def tokens(self, user: str | None = None) -> Records:
        """Tokens you may manage, never the tokens themselves: id, user, state, expiry."""
        params = {"user": user} if user is not None else None
        return list(self._json("GET", "/v1/admin/tokens", params=params)["tokens"])

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/v1/admin/tokens/{quote(token_id, safe='')}")

    def audit(
        self, actor: str | None = None, action: str | None = None, team: str | None = None, limit: int = 100
    ) -> Records:
        """Who cancelled, restarted, drained, changed teams, users, tokens or secrets; newest first."""
        params: dict[str, Any] = {"limit": limit}
        for k, v in (("actor", actor), ("action", action), ("team", team)):
            if v is not None:
                params[k] = v
        return list(self._json("GET", "/v1/admin/audit", params=params)["entries"])

    def set_secret(self, name: str, value: str, team: str | None = None) -> dict[str, Any]:
        """Store a team secret (team admins and admins); jobs name it in ``secrets: [NAME]``."""
        params = {"team": team} if team else None
        return self._json("PUT", f"/v1/secrets/{quote(name, safe='')}", json={"value": value}, params=params)

    def secrets(self, team: str | None = None) -> Records:
        """A team's secret names and dates (values never leave the control plane)."""
        params = {"team": team} if team else None
        return list(self._json("GET", "/v1/secrets", params=params)["secrets"])

    def delete_secret(self, name: str, team: str | None = None) -> None:
        params = {"team": team} if team else None
        self._request("DELETE", f"/v1/secrets/{quote(name, safe='')}", params=params)

    def drain_worker(self, worker: str, deadline: str | float | None = None) -> dict[str, Any]:
        """Drain a worker by id or name (admin only): nothing new is placed there, and its running
        jobs are preempted (checkpointed, requeued without using a retry) at ``deadline`` from now,
        e.g. ``"10m"``; at once when None."""
        body: dict[str, Any] = {} if deadline is None else {"deadline": deadline}
        return self._json("POST", f"/v1/admin/workers/{quote(worker, safe='')}/drain", json=body)

    def prune(
        self,
        before: str | float,
        *,
        dry_run: bool = False,
        batch: int | None = None,
        max_jobs: int | None = None,
    ) -> dict[str, Any]:
        """Archive the jobs that finished before ``before`` (``"90d"`` ago, or an ISO-8601 time) to
        object storage and delete them from the database (admin only); ``dry_run`` only counts.
        Returns the counts; ``more`` is true when ``max_jobs`` stopped it early (call again)."""
        body: dict[str, Any] = {"before": before, "dry_run": dry_run}
        if batch is not None:
            body["batch"] = batch
        if max_jobs is not None:
            body["max_jobs"] = max_jobs
        return self._json("POST", "/v1/admin/prune", json=body)


def _safe_target(dest: Path, rel: str) -> Path:
    """Where artifact ``rel`` goes under ``dest``; refuses absolute paths, '..' and symlinked escapes."""
    pure = PurePosixPath(rel)
    if not rel or "\\" in rel or pure.is_absolute() or ".." in pure.parts or "\x00" in rel:
        raise IntegrityError(
            0, "unsafe_path", f"artifact path {rel!r} would escape {dest}; refusing to download"
        )
    target = dest.joinpath(*pure.parts)
    root = dest.resolve()
    resolved = target.resolve()
    if resolved == root or root not in resolved.parents:
        raise IntegrityError(
            0, "unsafe_path", f"artifact path {rel!r} would escape {dest}; refusing to download"
        )
    return target


def new_idempotency_key() -> str:
    return uuid.uuid4().hex
