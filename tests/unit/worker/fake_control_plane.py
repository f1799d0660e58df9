"""A small in-process WorkerService and presigned-URL store, enough to drive the agent in tests.

It follows the proto, not the real server: it records what the agent sends and lets a test push
assignments and commands down the lease stream.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import grpc.aio

from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.proto.trainyard.v1 import worker_pb2_grpc as pb_grpc

BOOTSTRAP = "bootstrap-token"


class ObjectStore:
    """Presigned URLs are plain paths on this HTTP server; PUT stores, GET serves."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail_puts = False
        self.put_delay_s = 0.0
        """How long each PUT takes to answer (slow storage), on its own connection's thread."""
        store = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_PUT(self) -> None:
                n = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(n)
                if store.put_delay_s:
                    time.sleep(store.put_delay_s)
                if store.fail_puts:
                    self.send_response(500)
                else:
                    store.objects[self.path.lstrip("/")] = body
                    self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                body = store.objects.get(self.path.lstrip("/"))
                self.send_response(200 if body is not None else 404)
                self.send_header("content-length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, key: str) -> str:
        return f"{self.base}/{key}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Recorder:
    registers: list[pb.RegisterRequest] = field(default_factory=list)
    heartbeats: list[pb.HeartbeatRequest] = field(default_factory=list)
    reports: list[pb.ReportRequest] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)  # sizes of ReportBatch calls
    url_requests: list[pb.UrlRequest] = field(default_factory=list)
    seals: list[pb.SealLogChunkRequest] = field(default_factory=list)
    log_messages: int = 0
    lease_connects: int = 0
    logs: dict[tuple[str, int], bytearray] = field(default_factory=lambda: defaultdict(bytearray))


class FakeWorkerService(pb_grpc.WorkerServiceServicer):
    def __init__(self, objects: ObjectStore) -> None:
        self.batching = True  # False: answer ReportBatch UNIMPLEMENTED, as an older control plane would
        self.objects = objects
        self.rec = Recorder()
        self.leased: dict[tuple[str, int], pb.Assignment] = {}
        self.stale_on_started: set[tuple[str, int]] = set()
        self.heartbeat_commands: list[pb.Command] = []
        self.known = True
        self.token = "worker-token"
        self._streams: list[asyncio.Queue[pb.LeaseMessage | None]] = []
        self.changed = asyncio.Event()
        # True: every assignment comes with a LogTail, as if someone followed every job from its
        # start, so the live pushes carry the whole log. False: only what a test asks with ``tail``.
        self.follow_all = True

    def _auth(self, context: grpc.aio.ServicerContext[Any, Any], token: str) -> bool:
        md = dict(context.invocation_metadata() or ())
        return md.get("authorization") == f"Bearer {token}"

    def _note(self) -> None:
        self.changed.set()

    # -- test controls -----------------------------------------------------------------------------

    def assign(self, a: pb.Assignment) -> None:
        self.leased[(a.job_id, a.attempt)] = a
        for q in self._streams:
            q.put_nowait(pb.LeaseMessage(assignment=a))
            if self.follow_all:
                q.put_nowait(self._follow_all(a))

    @staticmethod
    def _follow_all(a: pb.Assignment) -> pb.LeaseMessage:
        return pb.LeaseMessage(log_tail=pb.LogTail(job_id=a.job_id, attempt=a.attempt, ttl_s=3600.0))

    def tail(
        self, job_id: str, attempt: int = 1, *, offset: int = 0, ttl_s: float = 60.0, stop: bool = False
    ) -> None:
        """A LogTail down the lease stream: follow (or with ``stop`` unfollow) the attempt's log."""
        msg = pb.LogTail(job_id=job_id, attempt=attempt, offset=offset, ttl_s=ttl_s, stop=stop)
        for q in self._streams:
            q.put_nowait(pb.LeaseMessage(log_tail=msg))

    def command(self, c: pb.Command) -> None:
        for q in self._streams:
            q.put_nowait(pb.LeaseMessage(command=c))

    def drop_lease_streams(self) -> None:
        for q in self._streams:
            q.put_nowait(None)

    def finished(self, job_id: str, attempt: int = 1) -> pb.ReportRequest | None:
        for r in self.rec.reports:
            if r.job_id == job_id and r.attempt == attempt and r.phase == pb.ReportRequest.FINISHED:
                return r
        return None

    def phases(self, job_id: str, attempt: int = 1) -> list[int]:
        return [r.phase for r in self.rec.reports if r.job_id == job_id and r.attempt == attempt]

    async def wait_for(self, predicate: Any, timeout: float = 20.0) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)

    async def wait_finished(self, job_id: str, attempt: int = 1, timeout: float = 20.0) -> pb.ReportRequest:
        await self.wait_for(lambda: self.finished(job_id, attempt) is not None, timeout)
        r = self.finished(job_id, attempt)
        assert r is not None
        return r

    # -- the service ---------------------------------------------------------------------------------

    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        if not self._auth(context, BOOTSTRAP):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad bootstrap token")
        self.rec.registers.append(request)
        self.known = True
        self._note()
        return pb.RegisterResponse(
            worker_id="w-1", worker_token=self.token, heartbeat_interval_s=0.2, cancel_grace_s=0.5
        )

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        if not self._auth(context, self.token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad worker token")
        self.rec.heartbeats.append(request)
        cmds, self.heartbeat_commands = self.heartbeat_commands, []
        self._note()
        return pb.HeartbeatResponse(commands=cmds, known=self.known)

    async def Lease(self, request: pb.LeaseRequest, context: Any) -> Any:
        if not self._auth(context, self.token) or request.worker_id != "w-1":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad worker token")
        self.rec.lease_connects += 1
        self._note()
        q: asyncio.Queue[pb.LeaseMessage | None] = asyncio.Queue()
        self._streams.append(q)
        try:
            for a in list(self.leased.values()):
                yield pb.LeaseMessage(assignment=a)
                if self.follow_all:
                    yield self._follow_all(a)
            while (msg := await q.get()) is not None:
                yield msg
        finally:
            self._streams.remove(q)

    async def Report(self, request: pb.ReportRequest, context: Any) -> pb.ReportResponse:
        if not self._auth(context, self.token) or request.worker_id != "w-1":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad worker token")
        self.rec.reports.append(request)
        self._note()
        key = (request.job_id, request.attempt)
        if request.phase == pb.ReportRequest.FINISHED:
            self.leased.pop(key, None)
        if request.phase == pb.ReportRequest.STARTED and key in self.stale_on_started:
            return pb.ReportResponse(result=pb.ReportResponse.STALE)
        return pb.ReportResponse(result=pb.ReportResponse.OK)

    async def ReportBatch(self, request: pb.ReportBatchRequest, context: Any) -> pb.ReportBatchResponse:
        if not self.batching:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "an older control plane")
        self.rec.batches.append(len(request.reports))
        return pb.ReportBatchResponse(results=[await self.Report(r, context) for r in request.reports])

    async def PushLogs(self, request_iterator: Any, context: Any) -> Any:
        if not self._auth(context, self.token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad worker token")
        async for d in request_iterator:
            self.rec.log_messages += 1
            buf = self.rec.logs[(d.job_id, d.attempt)]
            assert d.offset <= len(buf), "a gap in the pushed log"
            del buf[d.offset :]
            buf += d.data
            self._note()
            yield pb.LogAck(job_id=d.job_id, attempt=d.attempt, offset=len(buf))

    async def GetUrls(self, request: pb.UrlRequest, context: Any) -> pb.UrlResponse:
        if not self._auth(context, self.token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad worker token")
        self.rec.url_requests.append(request)
        self._note()
        purpose = pb.UrlRequest.Purpose.Name(request.purpose).lower()
        urls = []
        for name in request.names:
            key = f"{request.job_id}/{request.attempt}/{purpose}/{name}"
            urls.append(pb.SignedUrl(name=name, url=self.objects.url(key), object_key=key))
        return pb.UrlResponse(urls=urls)

    async def SealLogChunk(self, request: pb.SealLogChunkRequest, context: Any) -> pb.ReportResponse:
        if not self._auth(context, self.token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad worker token")
        self.rec.seals.append(request)
        self._note()
        return pb.ReportResponse(result=pb.ReportResponse.OK)


async def start_server(service: FakeWorkerService, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    pb_grpc.add_WorkerServiceServicer_to_server(service, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound
