"""HTTP transfers to and from presigned URLs: streamed from disk, split into parts above a size
threshold, and retried with backoff through storage outages.

The agent signs nothing itself. Every URL comes from the control plane, which checks the attempt's
lease, and a retry asks for a fresh one: an outage may outlast the URL it began with.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
import grpc.aio
import httpx

from trainyard.model.multipart import MAX_PARTS, MIN_PART_SIZE
from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.worker.rpc import PERMANENT, Backoff, ControlPlane

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_SIGN_BATCH = 100
"""Part URLs asked for in one SignMultipartParts call."""
T = TypeVar("T")
Sign = Callable[[], Awaitable[str]]


class _OnFirstRequest(httpx.AsyncBaseTransport):
    """A transport built when it is first used."""

    def __init__(self, make: Callable[[], httpx.AsyncBaseTransport]) -> None:
        self._make = make
        self._transport: httpx.AsyncBaseTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._transport is None:
            self._transport = self._make()
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()


def http_client(timeout_s: float, limits: httpx.Limits) -> httpx.AsyncClient:
    """An agent's client for presigned URLs. Its https:// transport, with the verified default TLS
    context, is built on the first https:// request: loading the CA bundle costs an idle agent about
    0.5 MB, and on the embedded defaults every URL is http://. The http:// transport never speaks
    TLS; its context loads no CA (and so would verify nothing, were it ever asked to). With a proxy
    in the environment, httpx's own client, which routes through it."""
    if urllib.request.getproxies():
        return httpx.AsyncClient(timeout=timeout_s, limits=limits)
    plain = httpx.AsyncHTTPTransport(verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), limits=limits)
    tls = _OnFirstRequest(lambda: httpx.AsyncHTTPTransport(limits=limits))
    return httpx.AsyncClient(timeout=timeout_s, transport=plain, mounts={"https://": tls})


class TransferError(Exception):
    """An upload or download that failed every try, or that no try can fix."""


class TransientError(Exception):
    """A failure another try may fix: storage or the control plane is unreachable for now."""


class MultipartUnsupported(Exception):
    """The control plane predates multipart uploads: send the file in one PUT."""


class UploadTarget(Protocol):
    """One object an upload goes to, and the control-plane calls that sign its URLs.

    Calls raise TransientError for what a later try may fix, TransferError for what it cannot, and
    StaleLease when the attempt is no longer this worker's."""

    async def sign(self) -> str:
        """A fresh presigned PUT for the whole object."""
        ...

    async def start_multipart(self, size: int, part_size: int) -> tuple[str, dict[int, str]]:
        """Begin a multipart upload: its id, and URLs for the first parts."""
        ...

    async def sign_parts(self, upload_id: str, numbers: Sequence[int]) -> dict[int, str]: ...

    async def complete_multipart(self, upload_id: str, parts: Sequence[tuple[int, str]]) -> int:
        """Assemble the parts (number, ETag); returns the size stored."""
        ...

    async def abort_multipart(self, upload_id: str) -> None: ...


def _rpc_errors(e: grpc.aio.AioRpcError, what: str) -> Exception:
    if e.code() in PERMANENT:
        return TransferError(f"{what}: {e.code().name}: {e.details()}")
    return TransientError(f"{what}: {e.code().name}: {e.details()}")


@dataclass(frozen=True)
class AttemptObject:
    """An object of one attempt (a log chunk, an artifact, its checkpoint), signed by the control plane."""

    rpc: ControlPlane
    job_id: str
    attempt: int
    lease_token: str
    purpose: pb.UrlRequest.Purpose.ValueType
    name: str

    def _ref(self, upload_id: str = "") -> pb.MultipartRef:
        return pb.MultipartRef(
            job_id=self.job_id,
            attempt=self.attempt,
            lease_token=self.lease_token,
            purpose=self.purpose,
            name=self.name,
            upload_id=upload_id,
        )

    async def sign(self) -> str:
        urls = await self.rpc.get_urls(self.job_id, self.attempt, self.lease_token, self.purpose, [self.name])
        signed = urls.get(self.name)
        if signed is None:
            raise TransferError(f"no upload URL for {self.name}")
        return signed.url

    async def start_multipart(self, size: int, part_size: int) -> tuple[str, dict[int, str]]:
        req = pb.StartMultipartRequest(ref=self._ref(), size=size, part_size=part_size)
        try:
            resp = await self.rpc.start_multipart(req)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise MultipartUnsupported from e
            raise _rpc_errors(e, "start of the multipart upload") from e
        return resp.upload_id, {p.number: p.url for p in resp.parts}

    async def sign_parts(self, upload_id: str, numbers: Sequence[int]) -> dict[int, str]:
        req = pb.SignMultipartPartsRequest(ref=self._ref(upload_id), numbers=list(numbers))
        try:
            resp = await self.rpc.sign_multipart_parts(req)
        except grpc.aio.AioRpcError as e:
            raise _rpc_errors(e, "part URLs") from e
        return {p.number: p.url for p in resp.parts}

    async def complete_multipart(self, upload_id: str, parts: Sequence[tuple[int, str]]) -> int:
        req = pb.CompleteMultipartRequest(
            ref=self._ref(upload_id), parts=[pb.CompletedPart(number=n, etag=etag) for n, etag in parts]
        )
        try:
            resp = await self.rpc.complete_multipart(req)
        except grpc.aio.AioRpcError as e:
            raise _rpc_errors(e, "completion of the multipart upload") from e
        return resp.size

    async def abort_multipart(self, upload_id: str) -> None:
        try:
            await self.rpc.abort_multipart(pb.AbortMultipartRequest(ref=self._ref(upload_id)))
        except grpc.aio.AioRpcError as e:
            raise _rpc_errors(e, "abort of the multipart upload") from e


class _Url:
    """A presigned URL, signed afresh for every try after the first when a signer is at hand."""

    def __init__(self, url: str | None, sign: Sign | None) -> None:
        self._url = url or None
        self._sign = sign
        self._used = False

    @property
    def refreshable(self) -> bool:
        return self._sign is not None

    async def get(self) -> str:
        if self._url is None or (self._used and self._sign is not None):
            if self._sign is None:
                raise TransferError("no URL to transfer to")
            self._url = await self._sign()
        self._used = True
        return self._url


class UploadDeadline:
    """When an agent's final uploads must give way to its reports: never while it runs; once it
    stops, a moment that leaves the reports time before the agent gives up on its attempts.

    A stopping agent must tell the control plane how each attempt ended before it goes, or the
    attempts end LOST (and run again without their checkpoints) when its heartbeats stop. Uploads
    still going at the deadline are cancelled: their files stay in the attempt's directory."""

    def __init__(self) -> None:
        self.at: float | None = None
        """The deadline in the event loop's clock (``loop.time()``), None until the agent stops."""
        self._set = asyncio.Event()

    def set(self, at: float) -> None:
        """The agent stops: uploads end by ``at`` (loop time). The first call decides."""
        if self.at is None:
            self.at = at
            self._set.set()

    async def passed(self) -> None:
        """Return once the deadline is set and has passed."""
        await self._set.wait()
        assert self.at is not None
        loop = asyncio.get_running_loop()
        while (left := self.at - loop.time()) > 0:
            await asyncio.sleep(left)

    async def within(self, coro: Awaitable[T]) -> tuple[bool, T | None]:
        """Run ``coro`` until it ends or the deadline passes, whichever comes first: (True, its
        result), or (False, None) with ``coro`` cancelled. Its exceptions propagate."""
        work = asyncio.ensure_future(coro)
        timer = asyncio.ensure_future(self.passed())
        try:
            await asyncio.wait({work, timer}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            timer.cancel()
        if work.done():
            return True, work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        return False, None


class Transfers:
    """Uploads and downloads through presigned URLs, with one retry policy.

    A failed try is retried with exponential backoff and jitter until at least ``attempts`` tries
    were made and ``retry_for_s`` seconds have passed, so a storage outage of minutes is ridden out.
    Files at least ``multipart_threshold`` bytes long go up in parts of ``part_size`` (larger when
    the file would need more than S3's 10,000 parts), ``part_concurrency`` at a time, each streamed
    from disk and retried on its own, so memory stays flat and a failure costs one part.

    ``max_in_flight``: the HTTP client's connection pool size. Requests beyond it wait their turn
    here, where waiting is not a failure: inside httpx a wait for a free connection counts against
    the request's timeout, and an agent stopping 64 attempts behind 4 connections saw its uploads
    fail with ``PoolTimeout`` and go to the back of the line to retry with backoff.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        attempts: int,
        backoff: Callable[[], Backoff],
        retry_for_s: float = 0.0,
        multipart_threshold: int = 64 << 20,
        part_size: int = 16 << 20,
        part_concurrency: int = 4,
        clock: Callable[[], float] = time.monotonic,
        max_in_flight: int | None = None,
    ) -> None:
        self._client = client
        self._slots = asyncio.Semaphore(max_in_flight) if max_in_flight else None
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._retry_for_s = max(0.0, retry_for_s)
        self._part_size = max(MIN_PART_SIZE, part_size)
        self._threshold = max(self._part_size, multipart_threshold)
        self._concurrency = max(1, part_concurrency)
        self._clock = clock

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]], *, refreshable: bool = False) -> T:
        backoff = self._backoff()
        started = self._clock()
        tries = 0
        refused = False
        while True:
            tries += 1
            try:
                if self._slots is None:
                    result = await op()
                else:
                    async with self._slots:
                        result = await op()
            except httpx.HTTPStatusError as e:
                status = e.response.status_code
                # An expired URL is refused with 403 and a fresh one will do; a fresh URL refused too
                # is a real refusal. Other 4xx answers will not change on another try.
                if status == 403 and refreshable and not refused:
                    refused = True
                elif status < 500 and status not in (408, 429):
                    raise TransferError(f"{what}: HTTP {status}") from e
                else:
                    refused = False
                error = f"HTTP {status}"
            except (httpx.TransportError, TransientError) as e:
                refused = False
                error = f"{type(e).__name__}: {e}"
            except OSError as e:
                # httpx reports network failures as TransportError; what is left is the local file
                # (gone, truncated, unreadable, or a full disk), which waiting does not mend.
                raise TransferError(f"{what}: {e}") from e
            else:
                if tries > 1:
                    log.info("%s went through on try %d", what, tries)
                return result
            elapsed = self._clock() - started
            if tries >= self._attempts and elapsed >= self._retry_for_s:
                raise TransferError(f"{what}: {error} (gave up after {tries} tries in {elapsed:.0f}s)")
            # The first failure of an outage is worth a line; the retries that follow are not.
            level = logging.WARNING if tries == 1 else logging.DEBUG
            log.log(level, "%s failed (%s); retrying with backoff", what, error)
            await backoff.sleep()

    async def put_bytes(
        self,
        url: str | None,
        data: bytes,
        content_type: str = "application/octet-stream",
        *,
        sign: Sign | None = None,
    ) -> None:
        """PUT ``data``; with ``sign``, each retry asks for a fresh URL."""
        target = _Url(url, sign)

        async def op() -> None:
            r = await self._client.put(
                await target.get(), content=data, headers={"content-type": content_type}
            )
            r.raise_for_status()

        await self._retry("upload", op, refreshable=target.refreshable)

    async def put_file(
        self,
        url: str | None,
        path: Path,
        content_type: str = "application/octet-stream",
        *,
        target: UploadTarget | None = None,
        name: str | None = None,
    ) -> None:
        """Upload a file, streamed from disk; with ``target``, retries get fresh URLs and a large file
        goes up in parts. ``name`` is what messages call it (``path`` may be a ``/proc/self/fd``
        entry)."""
        size = os.stat(path).st_size
        label = name or path.name
        what = f"upload of {label}"
        if target is not None and size >= self._threshold:
            try:
                await self._put_multipart(target, path, size, what)
                return
            except MultipartUnsupported:
                log.info("the control plane has no multipart uploads; sending %s in one piece", label)
        signed = _Url(url, target.sign if target is not None else None)

        async def op() -> None:
            r = await self._client.put(
                await signed.get(),
                content=_read_range(path, 0, size),
                headers={"content-type": content_type, "content-length": str(size)},
            )
            r.raise_for_status()

        await self._retry(what, op, refreshable=signed.refreshable)

    def part_size_for(self, size: int) -> int:
        """The configured part size, or the smallest whole MiB that keeps the file within S3's parts."""
        need = -(-size // MAX_PARTS)
        return max(self._part_size, -(-need // (1 << 20)) * (1 << 20))

    async def _put_multipart(self, target: UploadTarget, path: Path, size: int, what: str) -> None:
        part_size = self.part_size_for(size)
        count = max(1, -(-size // part_size))
        upload_id, urls = await self._retry(
            f"{what} (start)", lambda: target.start_multipart(size, part_size)
        )
        etags: dict[int, str] = {}
        numbers = iter(range(1, count + 1))

        async def first_url(n: int) -> str:
            if n not in urls:
                batch = list(range(n, min(count, n + _SIGN_BATCH - 1) + 1))
                urls.update(
                    await self._retry(f"{what} (sign parts)", lambda: target.sign_parts(upload_id, batch))
                )
            url = urls.pop(n, None)
            if url is None:
                raise TransferError(f"{what}: no URL for part {n}")
            return url

        async def resign(n: int) -> str:
            fresh = await target.sign_parts(upload_id, [n])
            if n not in fresh:
                raise TransferError(f"{what}: no URL for part {n}")
            return fresh[n]

        async def send_part(n: int) -> str:
            offset = (n - 1) * part_size
            length = min(part_size, size - offset)
            url = _Url(await first_url(n), functools.partial(resign, n))

            async def op() -> str:
                return await self._put_part(url, path, offset, length)

            return await self._retry(f"{what} (part {n} of {count})", op, refreshable=True)

        async def worker() -> None:
            # Workers share one iterator of part numbers, so each part is sent by exactly one of them.
            for n in numbers:
                etags[n] = await send_part(n)

        try:
            tasks = [asyncio.create_task(worker()) for _ in range(min(self._concurrency, count))]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            parts = sorted(etags.items())
            stored = await self._retry(
                f"{what} (complete)", lambda: target.complete_multipart(upload_id, parts)
            )
        except asyncio.CancelledError:
            # The agent is stopping: no time for RPCs. The parts are left for the bucket's lifecycle
            # rule (S3's AbortIncompleteMultipartUpload) to clear.
            raise
        except Exception:
            with contextlib.suppress(Exception):
                await target.abort_multipart(upload_id)
            raise
        if stored != size:
            raise TransferError(f"{what}: storage holds {stored} bytes, the file has {size}")

    async def _put_part(self, url: _Url, path: Path, offset: int, length: int) -> str:
        r = await self._client.put(
            await url.get(),
            content=_read_range(path, offset, length),
            headers={"content-length": str(length)},
        )
        r.raise_for_status()
        etag: str | None = r.headers.get("etag")
        if not etag:
            raise TransferError("the part upload was answered without an ETag")
        return etag

    async def get_file(self, url: str, dest: Path) -> None:
        async def op() -> None:
            async with self._client.stream("GET", url) as r:
                r.raise_for_status()
                with open(dest, "wb") as f:
                    async for chunk in r.aiter_bytes(_CHUNK):
                        f.write(chunk)

        await self._retry("download", op)


async def _read_range(path: Path, offset: int, length: int) -> AsyncIterator[bytes]:
    # Chunked reads keep a multi-gigabyte artifact out of memory; local-disk reads of 1 MiB are quick
    # enough not to need a thread each.
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left > 0:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise OSError(f"{path.name} is shorter than expected")
            left -= len(chunk)
            yield chunk
