"""Live log push on demand over one PushLogs stream, and sealing of log chunks into storage.

Every attempt's log is sealed into chunks in object storage (``LogSealer``): that is the durable,
complete copy, and the only way an unfollowed attempt's bytes leave the node. Live bytes go to the
control plane only while someone follows the attempt (``LogShipper.tail``, asked for by a LogTail
on the lease stream), so the control plane's log traffic grows with watchers, not with jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio

from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.worker.rpc import ControlPlane, StaleLease
from trainyard.worker.spool import LogSpool
from trainyard.worker.transfer import AttemptObject, TransferError, Transfers

log = logging.getLogger(__name__)

AttemptKey = tuple[str, int]

MAX_MESSAGE_BYTES = 1 << 20
"""Largest LogData payload: well under gRPC's default 4 MiB message limit."""
MAX_CATCH_UP_BYTES = 4 << 20
"""Most unsealed bytes a new follow pushes from before now: the control plane's live tail holds no
more (its default cap). More is unsealed only when sealing fails, or where another shipper archives
the log (``--log-shipper external``: ``sealed`` is always 0), and those bytes reach the follower
through the archive instead."""
MAX_EARLY_TAILS = 10_000
"""LogTails kept for attempts this agent has not started yet (the lease and the follow raced)."""
MAX_URLS_AHEAD = 8
"""Most log-chunk upload URLs one GetUrls asks for. A long attempt seals a chunk every few seconds:
asking for the next ones with this one makes that one RPC per eight chunks instead of one each. The
count doubles from 1, so an attempt that seals once asks for one URL."""
SEAL_JITTER = 0.2
"""A periodic seal at the full cadence comes up to this share of its wait early, at random."""
SEAL_SPREAD = 0.5
"""While the cadence grows, and at its first full wait, a seal comes up to this share early: the
attempts of a burst that started together draw their phases apart before they settle into the
once-a-minute rhythm, which the smaller ``SEAL_JITTER`` then keeps apart."""
URL_REUSE_S = 60.0
"""A URL asked for ahead is used only this long after it came (the control plane signs them for
10 minutes by default); an expired one is refused with 403 and signed again (``AttemptObject``)."""


def tail_start(offset: int, sealed: int, size: int) -> int:
    """Where a new follow's push starts in a spool of ``size`` bytes: at the first byte not in an
    indexed chunk (``sealed``) or the ``offset`` asked, whichever is later, and no earlier than the
    newest ``MAX_CATCH_UP_BYTES``; never past what is there."""
    return min(max(offset, sealed, size - MAX_CATCH_UP_BYTES, 0), size)


def _nothing_sealed() -> int:
    return 0


@dataclass(eq=False)
class _Feed:
    job_id: str
    attempt: int
    lease_token: str
    spool: LogSpool
    sealed: Callable[[], int]
    sent: int = 0
    acked: int = 0
    live_until: float = 0.0  # time.monotonic() until which someone follows; 0: nobody
    finished: bool = False
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    def live(self, now: float) -> bool:
        return self.live_until > now


class LogShipper:
    """Pushes the new log bytes of followed attempts on one bidi stream; resends from the last ack
    on reconnect.

    An attempt is followed from a ``tail`` until its ttl passes without another (the control plane
    repeats it while a follower is connected) or a ``stop``. The push starts at the first byte not
    yet sealed (or the offset asked, if later): bytes before it are in chunks the control plane has
    indexed, so a follower reading chunks and then the live tail sees no gap. The stream is opened
    on the first byte to push, so unfollowed attempts cost no log RPCs at all. After a send it waits
    ``flush_s`` before the next, so output is coalesced into few messages while still reaching the
    control plane well within a second.
    """

    def __init__(self, rpc: ControlPlane, *, flush_s: float) -> None:
        self._rpc = rpc
        self._flush_s = flush_s
        self._feeds: dict[AttemptKey, _Feed] = {}
        # A LogTail for an attempt not added yet: (offset, live until), applied by ``add``.
        self._early: dict[AttemptKey, tuple[int, float]] = {}
        self._dirty = asyncio.Event()
        self._call: grpc.aio.StreamStreamCall[pb.LogData, pb.LogAck] | None = None

    def add(
        self,
        job_id: str,
        attempt: int,
        lease_token: str,
        spool: LogSpool,
        sealed: Callable[[], int] = _nothing_sealed,
    ) -> None:
        """Track an attempt's spool; ``sealed`` says up to which offset its chunks are indexed by the
        control plane (always 0 where another shipper archives the log)."""
        key = (job_id, attempt)
        feed = self._feeds[key] = _Feed(job_id, attempt, lease_token, spool, sealed)
        early = self._early.pop(key, None)
        if early is not None and early[1] > time.monotonic():
            self._start(feed, early[0], early[1])

    def tail(self, job_id: str, attempt: int, offset: int, ttl_s: float) -> None:
        """Someone follows the attempt: push its live bytes for ``ttl_s`` more seconds."""
        key = (job_id, attempt)
        until = time.monotonic() + max(0.0, ttl_s)
        feed = self._feeds.get(key)
        if feed is None:
            now = time.monotonic()
            self._early = {k: v for k, v in self._early.items() if v[1] > now}
            if len(self._early) < MAX_EARLY_TAILS:
                self._early[key] = (offset, until)
            return
        self._start(feed, offset, until)

    def untail(self, job_id: str, attempt: int) -> None:
        """Nobody follows the attempt any more: push nothing more of it."""
        key = (job_id, attempt)
        self._early.pop(key, None)
        feed = self._feeds.get(key)
        if feed is None:
            return
        feed.live_until = 0.0
        if feed.finished:
            self.drop(key)

    def following(self, key: AttemptKey) -> bool:
        feed = self._feeds.get(key)
        return feed is not None and feed.live(time.monotonic())

    def _start(self, feed: _Feed, offset: int, until: float) -> None:
        if not feed.live(time.monotonic()):
            # Bytes below the sealed offset are in indexed chunks: the follower reads them there.
            start = tail_start(offset, feed.sealed(), feed.spool.size)
            feed.sent = feed.acked = start
        feed.live_until = max(feed.live_until, until)
        self._dirty.set()

    def notify(self) -> None:
        self._dirty.set()

    def finish(self, key: AttemptKey) -> None:
        """No more output will come: push what is left to a follower, then forget the attempt (its
        chunks are sealed)."""
        feed = self._feeds.get(key)
        if feed is None:
            return
        if feed.sent >= feed.spool.size or not feed.live(time.monotonic()):
            self.drop(key)
        else:
            feed.finished = True
            self._dirty.set()

    def drop(self, key: AttemptKey) -> None:
        feed = self._feeds.pop(key, None)
        if feed is not None:
            feed.gone.set()

    async def drained(self, key: AttemptKey, timeout_s: float) -> None:
        """Wait (a bounded time) until a finished attempt's last bytes went out to its follower, or
        nobody follows it any more, before its spool goes."""
        feed = self._feeds.get(key)
        if feed is not None:
            bound = min(timeout_s, max(0.0, feed.live_until - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(feed.gone.wait(), bound)

    def reconnect(self) -> None:
        """Open a new stream (after a re-registration or an outage), resending from the last acks."""
        if self._call is not None:
            self._call.cancel()

    async def run(self) -> None:
        backoff = self._rpc.backoff()
        while True:
            await self._dirty.wait()
            if not self._pending():
                self._dirty.clear()
                continue
            call = self._rpc.push_logs()
            self._call = call
            for feed in self._feeds.values():
                feed.sent = feed.acked
            receiver = asyncio.create_task(self._receive(call))
            try:
                await self._pump(call, receiver)
                backoff.reset()
            except grpc.aio.AioRpcError as e:
                log.warning("log stream failed (%s: %s); reconnecting", e.code().name, e.details())
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            except asyncio.InvalidStateError:
                log.debug("log stream closed while writing; reconnecting")
            except Exception:
                # The shipper must outlive any surprise: jobs keep running and the spool keeps the bytes.
                log.exception("log stream broke; reconnecting")
            finally:
                self._call = None
                receiver.cancel()
                call.cancel()
            await backoff.sleep()

    def _pending(self) -> bool:
        now = time.monotonic()
        for key, feed in list(self._feeds.items()):
            if not feed.live(now):
                if feed.finished:
                    self.drop(key)
            elif feed.sent < feed.spool.size or feed.finished:
                return True
        return False

    async def _pump(
        self, call: grpc.aio.StreamStreamCall[pb.LogData, pb.LogAck], receiver: asyncio.Task[None]
    ) -> None:
        while True:
            self._dirty.clear()
            now = time.monotonic()
            for key, feed in list(self._feeds.items()):
                if not feed.live(now):
                    if feed.finished:
                        self.drop(key)
                    continue
                while feed.sent < feed.spool.size:
                    end = min(feed.spool.size, feed.sent + MAX_MESSAGE_BYTES)
                    try:
                        data = feed.spool.read(feed.sent, end)
                    except OSError:
                        data = b""
                    if not data:
                        # The spool went away with its attempt directory; the sealed chunks hold it all.
                        feed.finished = True
                        break
                    await call.write(
                        pb.LogData(
                            job_id=feed.job_id,
                            attempt=feed.attempt,
                            lease_token=feed.lease_token,
                            offset=feed.sent,
                            data=data,
                        )
                    )
                    feed.sent += len(data)
                if feed.finished and self._feeds.get(key) is feed:
                    self.drop(key)
            if receiver.done():
                receiver.result()
                return
            await asyncio.sleep(self._flush_s)
            if not self._dirty.is_set():
                waiter = asyncio.create_task(self._dirty.wait())
                try:
                    await asyncio.wait({waiter, receiver}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()

    async def _receive(self, call: grpc.aio.StreamStreamCall[pb.LogData, pb.LogAck]) -> None:
        async for ack in call:
            feed = self._feeds.get((ack.job_id, ack.attempt))
            if feed is None:
                continue
            if ack.stale:
                log.info("log push for %s/%d refused as stale", ack.job_id, ack.attempt)
                self.drop((ack.job_id, ack.attempt))
                continue
            feed.acked = max(feed.acked, ack.offset)


class LogSealer:
    """Uploads one attempt's log in gzip chunks (seq 0, 1, ...) and indexes each with SealLogChunk.

    A chunk is sealed once ``seal_bytes`` are unsealed or the oldest unsealed byte is ``interval_s``
    old, and whatever is left is sealed by ``finish`` at the end of the attempt. Each periodic seal
    doubles ``interval_s``, up to ``interval_max_s``: a young attempt's output is in storage within
    seconds, and a long one costs a chunk a minute, not twelve. The background task exists only
    while there are unsealed bytes.
    """

    def __init__(
        self,
        rpc: ControlPlane,
        transfers: Transfers,
        spool: LogSpool,
        *,
        job_id: str,
        attempt: int,
        lease_token: str,
        seal_bytes: int,
        interval_s: float,
        interval_max_s: float | None = None,
        max_chunk_bytes: int,
        on_stale: Callable[[], None],
    ) -> None:
        self._rpc = rpc
        self._transfers = transfers
        self._spool = spool
        self._job_id = job_id
        self._attempt = attempt
        self._lease_token = lease_token
        self._seal_bytes = seal_bytes
        self._interval_s = interval_s
        self._interval_max_s = max(interval_s, interval_max_s if interval_max_s is not None else interval_s)
        self._max_chunk = max(1, max_chunk_bytes)
        self._on_stale = on_stale
        self.sealed = 0
        self.seq = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._finishing = False
        self._abandoned = False
        self._first_unsealed_at = 0.0
        self._spreading = True
        """Until the first wait at the full cadence is drawn: waits come up to ``SEAL_SPREAD`` early."""
        self._urls: dict[str, pb.SignedUrl] = {}
        self._urls_at = 0.0
        self._urls_ahead = 1

    async def _chunk_url(self, name: str) -> pb.SignedUrl:
        """The upload URL of chunk ``name``, from those asked for ahead when still fresh."""
        signed = self._urls.pop(name, None)
        if signed is not None and time.monotonic() - self._urls_at < URL_REUSE_S:
            return signed
        names = [str(self.seq + i) for i in range(self._urls_ahead)]
        self._urls_ahead = min(MAX_URLS_AHEAD, 2 * self._urls_ahead)
        self._urls = await self._rpc.get_urls(
            self._job_id, self._attempt, self._lease_token, pb.UrlRequest.LOG_CHUNK, names
        )
        self._urls_at = time.monotonic()
        signed = self._urls.pop(name, None)
        if signed is None:
            raise TransferError(f"no upload URL for log chunk {name}")
        return signed

    def notify(self) -> None:
        if self._finishing:
            return
        if self._task is None:
            self._first_unsealed_at = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self._loop())
        elif self._spool.size - self.sealed >= self._seal_bytes:
            self._wake.set()

    async def _loop(self) -> None:
        try:
            while not self._finishing:
                # Early, at random: the attempts of one burst of submissions start together, and
                # without it they sealed together, in storms that held up the control plane's
                # answers to everything else (at 2,000 running, a probe's start by seconds). A
                # fifth early each time kept the storms: the phases drifted apart too slowly.
                early = SEAL_SPREAD if self._spreading else SEAL_JITTER
                if self._interval_s >= self._interval_max_s:
                    self._spreading = False
                deadline = self._first_unsealed_at + self._interval_s * random.uniform(1 - early, 1)
                while self._spool.size - self.sealed < self._seal_bytes and not self._finishing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), remaining)
                    except TimeoutError:
                        break
                if self._finishing:
                    return
                try:
                    await self.seal_available()
                except TransferError as e:
                    log.warning("log chunk upload for %s/%d failed: %s", self._job_id, self._attempt, e)
                except StaleLease:
                    self._finishing = True
                    self._on_stale()
                    return
                except Exception:
                    # finish() seals the same bytes again; a periodic chunk is only an early copy.
                    log.exception("log chunk seal for %s/%d failed", self._job_id, self._attempt)
                self._first_unsealed_at = time.monotonic()
                self._interval_s = min(self._interval_max_s, 2 * self._interval_s)
                if self.sealed >= self._spool.size:
                    return
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    def abandon(self) -> None:
        """The lease is gone (stale): seal nothing more, and stop the background task, which would
        otherwise retry every interval for good (the attempt's spool goes with its directory)."""
        self._abandoned = self._finishing = True
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def finish(self) -> None:
        """Seal everything left. Raises TransferError or StaleLease."""
        self._finishing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.wait({self._task})
        if self._abandoned:
            raise StaleLease(f"{self._job_id}/{self._attempt}")
        while self.sealed < self._spool.size:  # the last bytes may still be arriving
            before = self.sealed
            await self.seal_available()
            if self.sealed == before:
                return  # the spool went away with its attempt's directory: nothing more to read

    async def seal_available(self) -> None:
        """Seal the bytes the spool holds now. Bytes that arrive during the uploads wait for the next
        seal: chasing them made each seal a train of one-line chunks whenever an upload was slow."""
        upto = self._spool.size
        while self.sealed < upto:
            start, end = self.sealed, min(upto, self.sealed + self._max_chunk)
            raw = self._spool.read(start, end)
            if not raw:
                return
            end = start + len(raw)
            gz = await asyncio.to_thread(gzip.compress, raw, 6, mtime=0)
            name = str(self.seq)
            signed = await self._chunk_url(name)
            target = AttemptObject(
                self._rpc, self._job_id, self._attempt, self._lease_token, pb.UrlRequest.LOG_CHUNK, name
            )
            await self._transfers.put_bytes(signed.url, gz, "application/gzip", sign=target.sign)
            await self._rpc.seal(
                pb.SealLogChunkRequest(
                    job_id=self._job_id,
                    attempt=self._attempt,
                    lease_token=self._lease_token,
                    seq=self.seq,
                    start_offset=start,
                    end_offset=end,
                    object_key=signed.object_key,
                    stored_size=len(gz),
                )
            )
            self.sealed = end
            self.seq += 1
