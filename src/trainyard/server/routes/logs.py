"""A job's log: its bytes, its last lines, or followed live (plain text or SSE)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from trainyard.model.quantity import parse_duration
from trainyard.model.records import Job
from trainyard.model.states import TERMINAL
from trainyard.server.errors import ApiError
from trainyard.server.responses import AUTHED, LOG_TEXT, errors
from trainyard.server.routes.deps import JobsDep, LogsDep, LogSearchDep, UserDep
from trainyard.server.routes.params import MAX_ATTEMPT, MAX_OFFSET
from trainyard.server.routes.sse import sse, sse_event
from trainyard.server.services.jobs import JobService
from trainyard.server.services.logs import LogFollow, LogService
from trainyard.server.services.logsearch import MAX_SEARCH_LIMIT, BadSearch

router = APIRouter()


@router.get(
    "/v1/jobs/{job_id}/logs",
    tags=["logs"],
    response_model=None,
    responses={**LOG_TEXT, **errors(*AUTHED, 404)},
    summary="Log bytes; follow=true streams until the attempt ends (SSE with Accept: text/event-stream)",
)
async def logs(
    job_id: str,
    user: UserDep,
    request: Request,
    jobs: JobsDep,
    logs: LogsDep,
    attempt: Annotated[int | None, Query(ge=1, le=MAX_ATTEMPT)] = None,
    since: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    tail: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
    follow: bool = False,
) -> Response:
    """An attempt's log (default: the latest attempt) from byte ``since``, or its last ``tail``
    lines. ``follow=true`` streams until the attempt ends: plain text, or SSE (``log``, ``attempt``
    and ``end`` events) with ``Accept: text/event-stream``. The headers give the attempt and the
    offset to resume from."""
    job = await jobs.visible_job(user, job_id)
    if attempt is not None and attempt > job.attempt:
        raise ApiError(404, "not_found", f"job {job_id} has no attempt {attempt}")
    if not follow:
        await logs.glance(job, attempt)
    if tail is not None:
        sl = await logs.tail_lines(job, attempt, tail)
    elif follow:
        sl = await logs.read_log(job, attempt, since)
    else:
        number = attempt if attempt is not None else job.attempt
        end, live = await logs.log_state(job, number)
        end = max(since, end)
        headers = {"X-Trainyard-Attempt": str(number), "X-Trainyard-Next-Offset": str(end)}
        if logs.attempt_live(job, number):
            # Unfollowed, a running attempt's newest bytes wait for the agent's next seal, or for the
            # short push this read asked for (glance): a poll a moment later has them.
            headers["X-Trainyard-Log-Live"] = "true" if live else "false"
        return StreamingResponse(
            _log_range(logs, job, number, since, end), media_type="text/plain; charset=utf-8", headers=headers
        )
    headers = {"X-Trainyard-Attempt": str(sl.attempt), "X-Trainyard-Next-Offset": str(sl.next_offset)}
    if not follow:
        return Response(sl.data, media_type="text/plain; charset=utf-8", headers=headers)
    sse_wanted = "text/event-stream" in request.headers.get("accept", "")
    gen = _follow_logs(
        jobs, logs, job, attempt, sl.offset + len(sl.data) if sl.data else sl.next_offset, sl.data, sse_wanted
    )
    if sse_wanted:
        return sse(gen)  # type: ignore[arg-type]
    return StreamingResponse(gen, media_type="text/plain; charset=utf-8", headers=headers)


async def _log_range(logs: LogService, job: Job, number: int, pos: int, end: int) -> AsyncIterator[bytes]:
    while pos < end:
        sl = await logs.read_log(job, number, pos)
        if not sl.data:
            return
        data = sl.data[: end - sl.offset]
        yield data
        pos = sl.offset + len(data)


async def _follow_logs(
    jobs: JobService, logs: LogService, job: Job, attempt: int | None, pos: int, first: bytes, sse: bool
) -> AsyncIterator[bytes | str]:
    number = attempt if attempt is not None else job.attempt
    pinned = attempt is not None

    def out(data: bytes, offset: int) -> bytes | str:
        if sse:
            text = data.decode("utf-8", "replace")
            return sse_event("log", json.dumps({"attempt": number, "offset": offset, "text": text}))
        return data

    # While the attempt runs, its agent pushes live bytes only because someone follows it.
    sub = logs.follower()
    try:
        if first:
            yield out(first, pos - len(first))
        async for item in _follow_loop(jobs, logs, job, number, pinned, pos, out, sse, sub):
            yield item
    finally:
        sub.close()


async def _follow_loop(
    jobs: JobService,
    logs: LogService,
    job: Job,
    number: int,
    pinned: bool,
    pos: int,
    out: Callable[[bytes, int], bytes | str],
    sse: bool,
    sub: LogFollow,
) -> AsyncIterator[bytes | str]:
    while True:
        await sub.watch(job, number)
        if number > 0:
            sl = await logs.read_log(job, number, pos)
            if sl.data:
                yield out(sl.data, sl.offset)
                pos = sl.offset + len(sl.data)
        current = await jobs.current(job.id)
        if current is None:
            return
        if number > 0 and not logs.attempt_live(current, number):
            # The attempt ended: its final bytes were sealed before the report; read them once more.
            sl = await logs.read_log(current, number, pos)
            if sl.data:
                yield out(sl.data, sl.offset)
            if pinned or current.status in TERMINAL:
                if sse:
                    yield sse_event(
                        "end",
                        json.dumps({"status": current.status.value, "exit_code": current.exit_code}),
                    )
                return
            if current.attempt > number:
                number, pos = current.attempt, 0
                banner = f"\n[trainyard: attempt {number} on worker {current.worker_id or '?'}]\n"
                yield (
                    out(banner.encode(), 0)
                    if not sse
                    else sse_event("attempt", json.dumps({"attempt": number, "worker_id": current.worker_id}))
                )
        elif number == 0 and current.attempt > 0:
            number, pos = current.attempt, 0
        job = current
        if number > 0:
            await sub.watch(job, number)  # a new attempt (or the first) is asked for before the wait
            await logs.wait(job.id, number, 1.0, since=pos)
        else:
            await asyncio.sleep(0.25)


# A fixed path under /v1/logs (no path parameter), so it can never be taken for a job's log route.
@router.get(
    "/v1/logs/search",
    tags=["logs"],
    responses=errors(*AUTHED),
    summary="Full-text search of the log lines you may see, newest first",
)
async def search_logs(
    user: UserDep,
    search: LogSearchDep,
    q: Annotated[str, Query(min_length=1, max_length=1000)],
    team: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(max_length=32)] = None,
    job: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_SEARCH_LIMIT)] = 50,
    cursor: Annotated[str | None, Query(max_length=40)] = None,
) -> dict[str, Any]:
    """Lines of sealed log chunks holding the words of ``q`` as a phrase (case-insensitive, in
    order, adjacent; punctuation only separates words), in the jobs you may see (an admin: every
    team's; others: their team's, so another ``team`` gives no lines). ``since``: a duration back
    from now (``1d``, ``2h30m``); ``job``: one job's lines. Newest indexed first; ``next_cursor``
    fetches the next page. Lines are indexed a few seconds after their chunk is sealed."""
    try:
        since_s = parse_duration(since) if since is not None else None
    except ValueError as e:
        raise ApiError(422, "invalid_request", str(e), [{"field": "since", "message": str(e)}]) from None
    try:
        hits, next_cursor = await search.search(
            user, q, team=team, since_s=since_s, job_id=job, limit=limit, cursor=cursor
        )
    except BadSearch as e:
        raise ApiError(422, "invalid_request", str(e), [{"field": e.field, "message": str(e)}]) from None
    return {"hits": hits, "next_cursor": next_cursor, "order": "newest"}
