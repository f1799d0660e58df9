"""HTTP transfers to and from presigned URLs, streamed and retried a few times."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx

from trainyard.worker.rpc import Backoff

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
T = TypeVar("T")


class TransferError(Exception):
    """An upload or download that failed every try."""


class Transfers:
    def __init__(self, client: httpx.AsyncClient, *, attempts: int, backoff: Callable[[], Backoff]) -> None:
        self._client = client
        self._attempts = max(1, attempts)
        self._backoff = backoff

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        backoff = self._backoff()
        for i in range(1, self._attempts + 1):
            try:
                return await op()
            except httpx.HTTPStatusError as e:
                # A 4xx (expired or refused URL) will not change on another try.
                if e.response.status_code < 500 or i == self._attempts:
                    raise TransferError(f"{what}: HTTP {e.response.status_code}") from e
            except (httpx.TransportError, OSError) as e:
                if i == self._attempts:
                    raise TransferError(f"{what}: {type(e).__name__}: {e}") from e
            log.debug("%s failed (try %d of %d)", what, i, self._attempts)
            await backoff.sleep()
        raise AssertionError("unreachable")

    async def put_bytes(self, url: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        async def op() -> None:
            r = await self._client.put(url, content=data, headers={"content-type": content_type})
            r.raise_for_status()

        await self._retry("upload", op)

    async def put_file(self, url: str, path: Path, content_type: str = "application/octet-stream") -> None:
        async def op() -> None:
            size = os.stat(path).st_size
            r = await self._client.put(
                url,
                content=_read_chunks(path),
                headers={"content-type": content_type, "content-length": str(size)},
            )
            r.raise_for_status()

        await self._retry(f"upload of {path.name}", op)

    async def get_file(self, url: str, dest: Path) -> None:
        async def op() -> None:
            async with self._client.stream("GET", url) as r:
                r.raise_for_status()
                with open(dest, "wb") as f:
                    async for chunk in r.aiter_bytes(_CHUNK):
                        f.write(chunk)

        await self._retry("download", op)


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    # Chunked reads keep a multi-gigabyte artifact out of memory; local-disk reads of 1 MiB are quick
    # enough not to need a thread each.
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk
