"""Typed calls to the control plane's WorkerService, with this worker's credential and retries."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio

from trainyard.model.states import AttemptOutcome
from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.proto.trainyard.v1 import worker_pb2_grpc as pbg
from trainyard.worker.config import WorkerConfig, grpc_target

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
"""Errors that another try will not fix. Everything else (UNAVAILABLE above all) is an outage to wait out."""

OUTAGE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED})
"""The control plane cannot be reached, or wants a new credential: waited out however long it takes.
A call that is answered with another error (a server error, a deadline, a message too large) may be
failing on its own account, which a bounded call gives up on after a while."""

REPORT_GIVE_UP_S = 300.0
"""How long a final report that a reachable control plane keeps failing is retried before the
attempt is reported, in a few words, as an infrastructure failure instead (long enough for a
database failover)."""
FALLBACK_REASON_CHARS = 1000
FALLBACK_STDERR_BYTES = 1024
_KEEPS_OUTCOME = frozenset(
    {
        AttemptOutcome.CANCELLED.value,
        AttemptOutcome.PREEMPTED.value,
        AttemptOutcome.TIMED_OUT.value,
        AttemptOutcome.START_FAILED.value,
        AttemptOutcome.INFRA.value,
    }
)
"""Outcomes a refused final report keeps in its fallback: the platform's own decisions (stop, preempt,
timeout) and failures that are not the job's. A success or a failure whose report (and so its
artifacts) did not get through cannot count as the job's own outcome: it becomes INFRA."""


_MAX_BATCH = 256


class _Unbatched(Exception):
    """Internal: this control plane takes reports one by one."""


_Queued = tuple[pb.ReportRequest, "asyncio.Future[pb.ReportResponse]"]
_BatchCall = grpc.aio.UnaryUnaryMultiCallable[pb.ReportBatchRequest, pb.ReportBatchResponse]


def _fail(batch: list[_Queued], e: BaseException) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_exception(e)


def channel_credentials(cfg: WorkerConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials for the control plane channel; None: plaintext."""
    if cfg.tls_ca is None and cfg.tls_cert is None and cfg.tls_key is None:
        return None
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ValueError("a client certificate needs both --tls-cert and --tls-key")
    return grpc.ssl_channel_credentials(
        root_certificates=cfg.tls_ca.read_bytes() if cfg.tls_ca is not None else None,
        private_key=cfg.tls_key.read_bytes() if cfg.tls_key is not None else None,
        certificate_chain=cfg.tls_cert.read_bytes() if cfg.tls_cert is not None else None,
    )


def open_channel(cfg: WorkerConfig, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """The channel to the control plane: TLS (mutual with a client certificate) or plaintext.
    ``options``: gRPC channel arguments (a simulated fleet asks for a connection of its own)."""
    target = grpc_target(cfg.server)
    creds = channel_credentials(cfg)
    if creds is None:
        return grpc.aio.insecure_channel(target, options=list(options) or None)
    return grpc.aio.secure_channel(target, creds, options=list(options) or None)


class StaleLease(Exception):
    """The control plane says this attempt is no longer this worker's."""


class Backoff:
    """Exponential backoff with jitter, so a fleet does not reconnect in lockstep after an outage."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._next = initial_s

    def reset(self) -> None:
        """Start the next wait from the initial delay again (after a success)."""
        self._next = self.initial_s

    async def sleep(self) -> None:
        """Wait the current delay (with jitter), then double it up to the maximum."""
        delay = self._next * random.uniform(0.5, 1.0)
        self._next = min(self.max_s, self._next * 2)
        await asyncio.sleep(delay)


@dataclass(frozen=True)
class Session:
    """What Register handed out."""

    worker_id: str
    token: str
    heartbeat_interval_s: float
    cancel_grace_s: float


class ControlPlane:
    """The WorkerService over one channel. Unary calls retry through outages until they are answered."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        bootstrap_token: str,
        rpc_timeout_s: float,
        backoff_initial_s: float,
        backoff_max_s: float,
        report_give_up_s: float = REPORT_GIVE_UP_S,
    ) -> None:
        self._bootstrap_token = bootstrap_token
        self._timeout = rpc_timeout_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self.report_give_up_s = report_give_up_s
        """How long a final report (or a batch of reports) that keeps failing while the control plane
        answers is retried; outages (``OUTAGE``) are waited out whatever their length."""
        self._settling: set[asyncio.Task[None]] = set()  # reports sent one by one after a batch failed
        self.session: Session | None = None
        self.generation = 0
        """Bumped by every Register; a caller that saw an old generation knows its stream is stale."""
        self.on_unauthenticated: Callable[[int], Awaitable[None]] | None = None
        """Called with the generation whose credential was refused; expected to register again."""
        # The generated client: one typed multi-callable per method of the proto's WorkerService.
        stub: pbg.WorkerServiceAsyncStub = pbg.WorkerServiceStub(channel)
        self._register = stub.Register
        self._heartbeat = stub.Heartbeat
        self._lease = stub.Lease
        self._report = stub.Report
        self._report_batch = stub.ReportBatch
        self._push_logs = stub.PushLogs
        self._get_urls = stub.GetUrls
        self._seal = stub.SealLogChunk
        self._start_multipart = stub.StartMultipart
        self._sign_parts = stub.SignMultipartParts
        self._complete_multipart = stub.CompleteMultipart
        self._abort_multipart = stub.AbortMultipart
        self._queued: list[_Queued] = []
        self._queued_wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._batching = True  # off once a control plane answers ReportBatch with UNIMPLEMENTED

    @property
    def worker_id(self) -> str:
        """This worker's id from its last Register; empty before the first."""
        return self.session.worker_id if self.session else ""

    def backoff(self) -> Backoff:
        """A fresh backoff with the agent's initial and maximum delays."""
        return Backoff(*self._backoff)

    def _metadata(self, token: str | None = None) -> tuple[tuple[str, str], ...]:
        if token is None:
            token = self.session.token if self.session else self._bootstrap_token
        return (("authorization", f"Bearer {token}"),)

    async def register(self, req: pb.RegisterRequest) -> Session:
        """One Register call with the bootstrap token; errors are the caller's to handle."""
        resp = await self._register(
            req, metadata=self._metadata(self._bootstrap_token), timeout=self._timeout
        )
        self.session = Session(
            worker_id=resp.worker_id,
            token=resp.worker_token,
            heartbeat_interval_s=resp.heartbeat_interval_s if resp.heartbeat_interval_s > 0 else 5.0,
            cancel_grace_s=resp.cancel_grace_s if resp.cancel_grace_s > 0 else 10.0,
        )
        self.generation += 1
        return self.session

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        build: Callable[[], Req],
        *,
        retry: bool = True,
        give_up_s: float | None = None,
    ) -> Resp:
        """One call, retried with backoff unless ``retry`` is False. PERMANENT errors are raised at
        once; with ``give_up_s``, so is an error other than an outage once such errors have gone on
        for that long (the first of them is always retried)."""
        backoff = self.backoff()
        failures = 0
        failing_since: float | None = None
        while True:
            generation = self.generation
            try:
                return await method(build(), metadata=self._metadata(), timeout=self._timeout)
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code in PERMANENT or not retry:
                    raise
                if give_up_s is not None and code not in OUTAGE:
                    now = time.monotonic()
                    if failing_since is None:
                        failing_since = now
                    elif now - failing_since >= give_up_s:
                        raise
                if code == grpc.StatusCode.UNAUTHENTICATED and self.on_unauthenticated is not None:
                    await self.on_unauthenticated(generation)
                failures += 1
                # The first failure of an outage is worth a line; the retries that follow are not.
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "control plane call failed (%s: %s); retrying", code.name, e.details())
            await backoff.sleep()

    async def heartbeat(
        self,
        running: Callable[[], list[pb.RunningAttempt]],
        draining: Callable[[], bool] = lambda: False,
        data_cache: Callable[[], list[str]] | None = None,
        gpu_utilization: Callable[[], dict[int, float]] | None = None,
    ) -> pb.HeartbeatResponse:
        """Send one heartbeat (running attempts, drain state, data cache, GPU use); the answer
        carries commands."""

        def request() -> pb.HeartbeatRequest:
            req = pb.HeartbeatRequest(worker_id=self.worker_id, running=running(), draining=draining())
            if data_cache is not None:
                req.data_cache.uris.extend(data_cache())
            if gpu_utilization is not None:
                req.gpu_utilization.update(gpu_utilization())
            return req

        return await self._call(self._heartbeat, request, retry=False)

    def lease(self) -> grpc.aio.UnaryStreamCall[pb.LeaseRequest, pb.LeaseMessage]:
        """Open the lease stream: assignments and commands for this worker until it ends."""
        return self._lease(pb.LeaseRequest(worker_id=self.worker_id), metadata=self._metadata())

    def push_logs(self) -> grpc.aio.StreamStreamCall[pb.LogData, pb.LogAck]:
        """Open the live log stream (bytes of running attempts, acknowledged by offset)."""
        return self._push_logs(None, metadata=self._metadata())

    async def report(self, req: pb.ReportRequest) -> pb.ReportResponse:
        """Send until answered; the worker id is filled in per try, as a re-registration may change it.

        Reports that pile up while a call is in flight go out together in one ReportBatch call."""
        if not self._batching:
            return await self._report_one(req)
        fut: asyncio.Future[pb.ReportResponse] = asyncio.get_running_loop().create_future()
        self._queued.append((req, fut))
        self._queued_wake.set()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_reports(), name="report-sender")
        return await fut

    async def _report_one(self, req: pb.ReportRequest) -> pb.ReportResponse:
        def build() -> pb.ReportRequest:
            req.worker_id = self.worker_id
            return req

        # A final report that keeps failing is given up on (report_final then sends a smaller one);
        # a STARTED report is retried as long as it takes, as the job runs meanwhile.
        final = req.phase == pb.ReportRequest.FINISHED
        return await self._call(self._report, build, give_up_s=self.report_give_up_s if final else None)

    def _settle_each(self, batch: list[_Queued]) -> None:
        """Send a batch's reports one by one, each answering its own caller: one report the control
        plane refuses (or cannot take) must not fail the others that happened to share its batch."""

        async def settle(req: pb.ReportRequest, fut: asyncio.Future[pb.ReportResponse]) -> None:
            try:
                res = await self._report_one(req)
            except Exception as e:
                if not fut.done():
                    fut.set_exception(e)
                return
            if not fut.done():
                fut.set_result(res)

        for req, fut in batch:
            task = asyncio.create_task(settle(req, fut), name="report")
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def report_final(self, req: pb.ReportRequest) -> pb.ReportResponse:
        """An attempt's FINISHED report, which must never leave the attempt RUNNING.

        Sent as ``report`` sends it: through outages, however long, and retried with backoff while
        it fails otherwise, for ``report_give_up_s``. A report the control plane refuses
        (INVALID_ARGUMENT or another error no retry fixes) or keeps failing is replaced by a minimal
        one: INFRA (unless the platform itself stopped the attempt), a reason saying the report was
        refused and why, no artifacts or checkpoint, the reason and stderr tail cut short. Should
        that be refused too, the answer is RESULT_UNSPECIFIED: the agent lets the attempt go, and the
        control plane's reconciler closes it as lost once heartbeats stop listing it."""
        try:
            return await self.report(req)
        except (grpc.aio.AioRpcError, ValueError) as e:
            # ValueError: a field protobuf cannot encode (a str that is not UTF-8).
            why = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.aio.AioRpcError) else str(e)
        log.error(
            "the final report of %s/%d was refused (%s); reporting an infrastructure failure instead",
            req.job_id,
            req.attempt,
            why,
        )
        fallback = fallback_report(req, why)
        try:
            return await self.report(fallback)
        except (grpc.aio.AioRpcError, ValueError) as e:
            log.error(
                "the fallback report of %s/%d was refused too (%s); the control plane will find the "
                "attempt lost",
                req.job_id,
                req.attempt,
                e,
            )
            return pb.ReportResponse(result=pb.ReportResponse.RESULT_UNSPECIFIED, message=str(e))

    async def _send_reports(self) -> None:
        while True:
            await self._queued_wake.wait()
            self._queued_wake.clear()
            while self._queued:
                batch, self._queued = self._queued[:_MAX_BATCH], self._queued[_MAX_BATCH:]

                def build(batch: list[_Queued] = batch) -> pb.ReportBatchRequest:
                    for req, _ in batch:
                        req.worker_id = self.worker_id
                    return pb.ReportBatchRequest(reports=[req for req, _ in batch])

                try:
                    if not self._batching:
                        raise _Unbatched
                    resp = await self._call(self._report_batch, build, give_up_s=self.report_give_up_s)
                    results = list(resp.results)
                    if len(results) != len(batch):
                        raise RuntimeError("ReportBatch answered a different number of reports")
                except _Unbatched:
                    self._settle_each(batch)
                    continue
                except grpc.aio.AioRpcError as e:
                    if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                        log.info("the control plane has no ReportBatch; sending reports one by one")
                        self._batching = False
                    elif len(batch) == 1 and (
                        e.code() in PERMANENT or batch[0][0].phase == pb.ReportRequest.FINISHED
                    ):
                        _fail(batch, e)  # alone, it would fare no better
                        continue
                    else:
                        # Refused or given up on: each report goes on alone, so that one bad report
                        # fails no other, and a STARTED report is retried as long as it takes.
                        log.warning(
                            "a batch of %d report(s) failed (%s: %s); sending them one by one",
                            len(batch),
                            e.code().name,
                            e.details(),
                        )
                    self._settle_each(batch)
                    continue
                except Exception as e:
                    _fail(batch, e)
                    continue
                for (_, fut), res in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(res)

    async def get_urls(
        self,
        job_id: str,
        attempt: int,
        lease_token: str,
        purpose: pb.UrlRequest.Purpose.ValueType,
        names: list[str],
    ) -> dict[str, pb.SignedUrl]:
        """Upload URLs for ``names``, retried through outages. A name the control plane refuses (or
        that is not UTF-8) raises TransferError: another try would be refused the same way."""
        # Imported here: the transfer module builds on this one.
        from trainyard.worker.transfer import TransferError

        try:
            resp = await self._call(
                self._get_urls,
                lambda: pb.UrlRequest(
                    job_id=job_id, attempt=attempt, lease_token=lease_token, purpose=purpose, names=names
                ),
            )
        except grpc.aio.AioRpcError as e:  # only what no retry fixes gets here
            raise TransferError(f"upload URLs refused: {e.code().name}: {e.details()}") from e
        except ValueError as e:
            raise TransferError(f"upload URLs not requested: a name is not valid UTF-8 ({e})") from e
        if resp.stale:
            raise StaleLease(f"{job_id}/{attempt}")
        return {u.name: u for u in resp.urls}

    async def seal(self, req: pb.SealLogChunkRequest) -> None:
        """Record an uploaded log chunk of an attempt with the control plane."""
        resp = await self._call(self._seal, lambda: req)
        if resp.result == pb.ReportResponse.STALE:
            raise StaleLease(f"{req.job_id}/{req.attempt}")

    # Multipart calls that touch storage (start, complete, abort) are tried once: the control plane
    # answers UNAVAILABLE while storage is down, and the uploader retries them within its own bounded
    # window rather than the unbounded one here. Signing part URLs touches nothing but the control
    # plane, so it waits out an outage like GetUrls.
    async def start_multipart(self, req: pb.StartMultipartRequest) -> pb.StartMultipartResponse:
        """Begin a multipart upload of a large artifact or checkpoint."""
        resp = await self._call(self._start_multipart, lambda: req, retry=False)
        if resp.stale:
            raise StaleLease(f"{req.ref.job_id}/{req.ref.attempt}")
        return resp

    async def sign_multipart_parts(self, req: pb.SignMultipartPartsRequest) -> pb.SignMultipartPartsResponse:
        """Presigned URLs for parts of a multipart upload."""
        resp = await self._call(self._sign_parts, lambda: req)
        if resp.stale:
            raise StaleLease(f"{req.ref.job_id}/{req.ref.attempt}")
        return resp

    async def complete_multipart(self, req: pb.CompleteMultipartRequest) -> pb.CompleteMultipartResponse:
        """Finish a multipart upload from its parts' ETags."""
        resp = await self._call(self._complete_multipart, lambda: req, retry=False)
        if resp.stale:
            raise StaleLease(f"{req.ref.job_id}/{req.ref.attempt}")
        return resp

    async def abort_multipart(self, req: pb.AbortMultipartRequest) -> None:
        """Give up a multipart upload, so that its parts are freed."""
        resp = await self._call(self._abort_multipart, lambda: req, retry=False)
        if resp.stale:
            raise StaleLease(f"{req.ref.job_id}/{req.ref.attempt}")


def fallback_report(req: pb.ReportRequest, why: str) -> pb.ReportRequest:
    """The few words sent in place of a final report the control plane refused (see ``report_final``):
    the same attempt and lease, its exit code and log size, an outcome that cannot be mistaken for
    the job's own, and why; nothing that could have been the refused part (artifacts, checkpoint)."""
    outcome = req.outcome if req.outcome in _KEEPS_OUTCOME else AttemptOutcome.INFRA.value
    said = f"; the attempt's own outcome: {req.outcome}" + (f" ({req.reason})" if req.reason else "")
    reason = f"the control plane refused the final report ({why}){said}"
    if len(reason) > FALLBACK_REASON_CHARS:
        reason = reason[: FALLBACK_REASON_CHARS - 1] + "…"
    fallback = pb.ReportRequest(
        job_id=req.job_id,
        attempt=req.attempt,
        lease_token=req.lease_token,
        phase=pb.ReportRequest.FINISHED,
        outcome=outcome,
        # NUL and lone surrogates are the only characters that could make the reason itself refused.
        reason=reason.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8"),
        stderr_tail=req.stderr_tail[-FALLBACK_STDERR_BYTES:],
        log_bytes=req.log_bytes,
        at=req.at,
    )
    if req.has_exit_code:
        fallback.exit_code = req.exit_code
        fallback.has_exit_code = True
    return fallback
