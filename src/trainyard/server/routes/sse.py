"""Server-Sent Events: the framing, the response, and waiting on the event bus between reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse


def sse_event(event: str, data: str, id_: int | None = None) -> str:
    """One event in SSE framing (with its id, when it has one, for Last-Event-ID resumption)."""
    head = f"id: {id_}\n" if id_ is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


def sse(gen: AsyncIterator[str]) -> StreamingResponse:
    """A streaming response of SSE text that proxies neither cache nor buffer."""
    return StreamingResponse(
        gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def next_for_job(sub: Any, job_id: str, timeout: float) -> bool:
    """Wait for a bus message about ``job_id``; False after ``timeout`` or when the bus closes."""

    async def wait() -> bool:
        async for payload in sub:
            if payload.get("job_id") == job_id:
                return True
        return False

    try:
        return await asyncio.wait_for(wait(), timeout)
    except TimeoutError:
        return False


async def next_any(sub: Any, timeout: float) -> bool:
    """Wait for any bus message; False after ``timeout`` or when the bus closes."""

    async def wait() -> bool:
        async for _ in sub:
            return True
        return False

    try:
        return await asyncio.wait_for(wait(), timeout)
    except TimeoutError:
        return False
