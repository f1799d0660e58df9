"""The worker gRPC service: the only way a worker agent touches the platform."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc

from trainyard.model.records import LogChunk, Worker
from trainyard.model.states import AttemptOutcome
from trainyard.objects.base import (
    MAX_PARTS,
    MIN_PART_SIZE,
    ObjectNotFound,
    Part,
    StorageUnavailable,
    check_key,
    key_problem,
)
from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.proto.trainyard.v1 import worker_pb2_grpc as pbg
from trainyard.server.grpc_tls import server_credentials
from trainyard.server.platform import Platform
from trainyard.server.services.dispatch import command_message
from trainyard.server.services.fleet import Beat
from trainyard.store import FinishReport

log = logging.getLogger("trainyard.worker_service")

MAX_PART_SIZE = 5 << 30
"""S3's largest part."""
PARTS_PER_CALL = 1000
"""Part URLs handed out by one StartMultipart or SignMultipartParts call."""
T = TypeVar("T")
_OUTCOMES = {o.value for o in AttemptOutcome} - {AttemptOutcome.LOST.value}


def _check_report(request: pb.ReportRequest) -> None:
    """ValueError (answered INVALID_ARGUMENT) for a report no agent should send.

    A finished attempt's artifacts and checkpoint must be objects of that attempt, stored under the
    keys GetUrls hands out: a report cannot point a job's artifact at another job's object."""
    if request.phase == pb.ReportRequest.FINISHED:
        if request.outcome not in _OUTCOMES:
            raise ValueError(f"unknown outcome {request.outcome!r}")
        for a in request.artifacts:
            key = _object_key(request.job_id, request.attempt, pb.UrlRequest.ARTIFACT, a.path)
            if a.object_key != key:
                raise ValueError(f"artifact {a.path!r}: object key {a.object_key!r} is not the attempt's")
        if request.checkpoint_key:
            own = f"jobs/{request.job_id}/{request.attempt}/checkpoint/"
            if not check_key(request.checkpoint_key).startswith(own):
                raise ValueError(f"checkpoint key {request.checkpoint_key!r} is not the attempt's")
    elif request.phase != pb.ReportRequest.STARTED:
        raise ValueError("phase must be STARTED or FINISHED")


_FAMILIES: dict[int, tuple[str, str]] = {
    pb.UrlRequest.ARTIFACT: ("artifacts", "artifact"),
    pb.UrlRequest.CHECKPOINT: ("checkpoint", "checkpoint"),
}


def _object_key(job_id: str, attempt: int, purpose: int, name: str) -> str:
    """The key an attempt's object of this purpose and name gets; ValueError saying why for a name
    that cannot be one (see ``key_problem``: any UTF-8 relative path a filesystem allows works).

    The same families as GetUrls hands out, so a large object lands where a small one would. The key
    is the name itself under the attempt's prefix; each object store maps it safely (a path under
    its root, an S3 key), and presigned URLs percent-encode it."""
    base = f"jobs/{job_id}/{attempt}"
    if purpose == pb.UrlRequest.LOG_CHUNK:
        return check_key(f"{base}/logs/{int(name):08d}.log.gz")
    if purpose not in _FAMILIES:
        raise ValueError("unknown purpose")
    family, what = _FAMILIES[purpose]  # the directory under the attempt's prefix, and the word
    key = f"{base}/{family}/{name}"
    problem = key_problem(key)
    if problem is not None:
        raise ValueError(f"the {what} name {name!r} cannot be stored: {problem}")
    return key


def _text(value: str) -> str:
    """Text that every database keeps: NUL, which PostgreSQL refuses in text, replaced."""
    return value.replace("\x00", "\ufffd")


def _bearer(context: grpc.aio.ServicerContext) -> str:  # type: ignore[type-arg]
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return ""


class WorkerService(pbg.WorkerServiceServicer):
    """The worker protocol over the platform's services: authentication, fleet, dispatch, attempts."""

    def __init__(self, platform: Platform) -> None:
        self.kick_scheduler = platform.kick_scheduler
        self.auth = platform.auth
        self.fleet = platform.fleet
        self.dispatcher = platform.dispatcher
        self.attempts = platform.attempts
        self.logs = platform.logs
        self.objects = platform.objects
        self.settings = platform.settings
        self.live_bytes = platform.metrics.log_live_bytes

    async def _worker(self, context: grpc.aio.ServicerContext) -> Worker:  # type: ignore[type-arg]
        """The calling worker, from its credential; aborts UNAUTHENTICATED otherwise."""
        worker = await self.auth.worker(_bearer(context))
        if worker is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid worker credential is required")
            raise AssertionError("unreachable")
        return worker

    async def Register(
        self,
        request: pb.RegisterRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> pb.RegisterResponse:
        """An agent (re)registers with the bootstrap token: its worker id and credential."""
        if not self.auth.is_bootstrap(_bearer(context)):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the worker bootstrap token is required")
        cap = request.capacity
        if not request.name or cap.cpu <= 0 or cap.memory <= 0 or cap.gpu < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name and a positive capacity are required")
        worker, credential = await self.fleet.register(
            cached_uris=request.data_cache.uris if request.HasField("data_cache") else None,
            name=request.name,
            hostname=request.hostname or request.name,
            pool=request.pool or "default",
            region=request.region or None,
            cpu=cap.cpu,
            memory=cap.memory,
            gpu=cap.gpu,
            gpu_type=cap.gpu_type or None,
            labels=dict(request.labels),
            version=request.version or None,
        )
        log.info("worker %s registered as %s (%s cpu, %s gpu)", request.name, worker.id, cap.cpu, cap.gpu)
        return pb.RegisterResponse(
            worker_id=worker.id,
            worker_token=credential,
            heartbeat_interval_s=self.settings.heartbeat_interval,
            cancel_grace_s=self.settings.cancel_grace,
        )

    async def Heartbeat(
        self,
        request: pb.HeartbeatRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> pb.HeartbeatResponse:
        """A live worker's heartbeat: the commands it must act on (``known`` false: register anew)."""
        worker = await self._worker(context)
        if worker.status == "DEAD":
            # Declared dead while it was away: its attempts were requeued. It must register anew
            # (which kills anything it still runs through KILL_STALE on the next heartbeat).
            return pb.HeartbeatResponse(known=False)
        beat = Beat(
            running=[(r.job_id, r.attempt, r.lease_token) for r in request.running],
            checkpoints=[(r.job_id, r.attempt, r.last_checkpoint_at) for r in request.running],
            draining=request.draining,
            cached_uris=request.data_cache.uris if request.HasField("data_cache") else None,
            gpu_utilization=request.gpu_utilization,
        )
        cmds = await self.fleet.heartbeat(worker, beat)
        return pb.HeartbeatResponse(known=True, commands=[command_message(c) for c in cmds])

    async def Lease(
        self,
        request: pb.LeaseRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[pb.LeaseMessage]:
        """The worker's lease stream: what it holds (again), then new assignments and commands."""
        worker = await self._worker(context)
        queue = self.dispatcher.connect(worker.id)
        try:
            # Re-send everything this worker holds: it dedupes by (job, attempt).
            for msg in await self.dispatcher.held_assignments(worker.id):
                yield msg
            self.kick_scheduler.set()
            while True:
                msg = await queue.get()
                yield msg
        finally:
            self.dispatcher.disconnect(worker.id, queue)

    async def Report(
        self,
        request: pb.ReportRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> pb.ReportResponse:
        """An attempt started or finished; STALE for an old lease token."""
        worker = await self._worker(context)
        try:
            return await self._report(request, worker)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise AssertionError("unreachable") from e

    async def ReportBatch(
        self,
        request: pb.ReportBatchRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> pb.ReportBatchResponse:
        """Several reports at once, applied in one transaction by group commit."""
        worker = await self._worker(context)
        try:
            for r in request.reports:
                _check_report(r)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        # Concurrently, so that group commit applies the whole batch in one transaction.
        results = await asyncio.gather(*(self._report(r, worker) for r in request.reports))
        return pb.ReportBatchResponse(results=results)

    async def _report(self, request: pb.ReportRequest, worker: Worker) -> pb.ReportResponse:
        _check_report(request)
        if request.phase == pb.ReportRequest.STARTED:
            res = await self.attempts.started(request.job_id, request.attempt, request.lease_token, worker.id)
        else:
            rep = FinishReport(
                job_id=request.job_id,
                attempt=request.attempt,
                lease_token=request.lease_token,
                worker_id=worker.id,
                outcome=AttemptOutcome(request.outcome),
                exit_code=request.exit_code if request.has_exit_code else None,
                reason=_text(request.reason) or None,
                stderr_tail=_text(request.stderr_tail[-4096:].decode("utf-8", "replace")) or None,
                artifacts=tuple((a.path, a.size, a.sha256, a.object_key) for a in request.artifacts),
                log_bytes=request.log_bytes,
                checkpoint_key=request.checkpoint_key or None,
            )
            res = await self.attempts.finished(rep)
        if res.ok:
            return pb.ReportResponse(result=pb.ReportResponse.OK, message=res.message)
        return pb.ReportResponse(result=pb.ReportResponse.STALE, message=res.message)

    async def PushLogs(
        self,
        request_iterator: AsyncIterator[pb.LogData],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[pb.LogAck]:
        """Live log bytes of followed attempts, acknowledged with the offset kept (``stale``: the
        attempt is not this worker's any more)."""
        await self._worker(context)
        verified: dict[tuple[str, int], bool] = {}
        async for msg in request_iterator:
            self.live_bytes.inc(len(msg.data))
            key = (msg.job_id, msg.attempt)
            ok = verified.get(key)
            if ok is None:
                ok = verified[key] = await self.attempts.token_ok(msg.job_id, msg.attempt, msg.lease_token)
            if not ok:
                yield pb.LogAck(job_id=msg.job_id, attempt=msg.attempt, offset=msg.offset, stale=True)
                continue
            end = self.logs.append(msg.job_id, msg.attempt, msg.offset, msg.data)
            yield pb.LogAck(job_id=msg.job_id, attempt=msg.attempt, offset=end)

    async def GetUrls(
        self,
        request: pb.UrlRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> pb.UrlResponse:
        """Presigned upload URLs for an attempt's log chunks, artifacts or checkpoint."""
        await self._worker(context)
        ok = await self.attempts.token_ok(request.job_id, request.attempt, request.lease_token)
        if not ok:
            return pb.UrlResponse(stale=True)
        urls = []
        for name in request.names:
            try:
                key = _object_key(request.job_id, request.attempt, request.purpose, name)
                url = self.objects.presign(key, "PUT", self.settings.url_ttl)
            except ValueError as e:
                # Permanent for this name: the agent ends the attempt with a note, never retries.
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
                raise AssertionError("unreachable") from e
            urls.append(pb.SignedUrl(name=name, url=url, object_key=key))
        return pb.UrlResponse(urls=urls)

    async def SealLogChunk(
        self,
        request: pb.SealLogChunkRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> pb.ReportResponse:
        """Index a log chunk the worker uploaded."""
        await self._worker(context)
        expected = f"jobs/{request.job_id}/{request.attempt}/logs/{request.seq:08d}.log.gz"
        if request.object_key != expected or request.end_offset < request.start_offset:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "chunk key or offsets do not match")
        chunk = LogChunk(
            job_id=request.job_id,
            attempt=request.attempt,
            seq=request.seq,
            start_offset=request.start_offset,
            end_offset=request.end_offset,
            object_key=request.object_key,
            stored_size=request.stored_size,
        )
        ok = await self.attempts.seal_log_chunk(chunk, request.lease_token)
        result = pb.ReportResponse.OK if ok else pb.ReportResponse.STALE
        return pb.ReportResponse(result=result)

    # ---- multipart uploads ----------------------------------------------------------------------
    async def _multipart_key(
        self,
        ref: pb.MultipartRef,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> str | None:
        """The upload's object key; None when the lease token is not the attempt's (answered stale)."""
        await self._worker(context)
        ok = await self.attempts.token_ok(ref.job_id, ref.attempt, ref.lease_token)
        if not ok:
            return None
        try:
            return _object_key(ref.job_id, ref.attempt, ref.purpose, ref.name)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{ref.name!r}: {e}")
            raise AssertionError("unreachable") from e

    async def _storage(
        self,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
        fn: Callable[..., T],
        *args: object,
    ) -> T:
        """A blocking object-store call off the event loop, its errors as gRPC status codes: the agent
        retries UNAVAILABLE (storage down) with backoff and gives up on the others."""
        try:
            return await asyncio.to_thread(fn, *args)
        except ObjectNotFound as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"no such multipart upload: {e}")
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except StorageUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"object storage unavailable: {e}")
        raise AssertionError("unreachable")

    def _part_urls(self, key: str, upload_id: str, numbers: list[int]) -> list[pb.PartUrl]:
        ttl = self.settings.url_ttl
        return [pb.PartUrl(number=n, url=self.objects.presign_part(key, upload_id, n, ttl)) for n in numbers]

    async def StartMultipart(
        self,
        request: pb.StartMultipartRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> pb.StartMultipartResponse:
        """Start a multipart upload of a large artifact or checkpoint: the first part URLs."""
        key = await self._multipart_key(request.ref, context)
        if key is None:
            return pb.StartMultipartResponse(stale=True)
        size, part_size, limit = request.size, request.part_size, self.settings.object_limit
        if not 0 <= size <= limit:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{size} bytes is over the {limit} limit")
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE or -(-size // part_size) > MAX_PARTS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"parts must be {MIN_PART_SIZE}..{MAX_PART_SIZE} bytes and at most {MAX_PARTS} of them",
            )
        upload_id = await self._storage(context, self.objects.create_multipart, key)
        count = max(1, -(-size // part_size))
        first = list(range(1, min(count, PARTS_PER_CALL) + 1))
        parts = await self._storage(context, self._part_urls, key, upload_id, first)
        return pb.StartMultipartResponse(upload_id=upload_id, object_key=key, parts=parts)

    async def SignMultipartParts(
        self,
        request: pb.SignMultipartPartsRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> pb.SignMultipartPartsResponse:
        """Presigned URLs for more parts of a multipart upload."""
        key = await self._multipart_key(request.ref, context)
        if key is None:
            return pb.SignMultipartPartsResponse(stale=True)
        if len(request.numbers) > PARTS_PER_CALL:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {PARTS_PER_CALL} parts a call")
        numbers = list(request.numbers)
        parts = await self._storage(context, self._part_urls, key, request.ref.upload_id, numbers)
        return pb.SignMultipartPartsResponse(parts=parts)

    async def CompleteMultipart(
        self,
        request: pb.CompleteMultipartRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> pb.CompleteMultipartResponse:
        """Assemble a multipart upload: its key and size."""
        key = await self._multipart_key(request.ref, context)
        if key is None:
            return pb.CompleteMultipartResponse(stale=True)
        objects, upload_id = self.objects, request.ref.upload_id
        parts = [Part(p.number, p.etag) for p in request.parts]
        try:
            size = await asyncio.to_thread(objects.complete_multipart, key, upload_id, parts)
        except ObjectNotFound:
            # The answer to an earlier try may have been lost after the upload was assembled; the
            # worker compares the size with its file, so a leftover object of another size is caught.
            size = await self._storage(context, objects.size, key)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise AssertionError("unreachable") from e
        except StorageUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"object storage unavailable: {e}")
            raise AssertionError("unreachable") from e
        if size > self.settings.object_limit:
            await self._storage(context, objects.delete, key)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{size} bytes is over the {self.settings.object_limit} limit",
            )
        return pb.CompleteMultipartResponse(object_key=key, size=size)

    async def AbortMultipart(
        self,
        request: pb.AbortMultipartRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> pb.AbortMultipartResponse:
        """Abandon a multipart upload."""
        key = await self._multipart_key(request.ref, context)
        if key is None:
            return pb.AbortMultipartResponse(stale=True)
        await self._storage(context, self.objects.abort_multipart, key, request.ref.upload_id)
        return pb.AbortMultipartResponse()


async def start_grpc(platform: Platform, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Serve the worker service on ``host:port`` (TLS when configured): the server and its port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 16 << 20),
            ("grpc.keepalive_time_ms", 20000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10000),
        ]
    )
    pbg.add_WorkerServiceServicer_to_server(WorkerService(platform), server)
    creds = server_credentials(platform.settings)
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen for workers on {host}:{port}")
    await server.start()
    await asyncio.sleep(0)
    return server, bound
