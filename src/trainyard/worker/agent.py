"""`yard worker`: registers with the control plane, takes leased attempts and runs them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import warnings
from collections import OrderedDict

import grpc
import grpc.aio
import httpx

from trainyard import __version__
from trainyard.model.states import AttemptOutcome
from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.worker.attempt import AttemptContext, AttemptRunner
from trainyard.worker.cache_scan import cached_uris
from trainyard.worker.config import NodeCapacity, WorkerConfig, detect_capacity
from trainyard.worker.executors.base import Executor
from trainyard.worker.executors.routing import executor_for
from trainyard.worker.gpu import GpuSampler
from trainyard.worker.logship import LogShipper
from trainyard.worker.rpc import PERMANENT, ControlPlane, open_channel
from trainyard.worker.slots import AttemptSlots
from trainyard.worker.spot import SpotNoticeWatcher
from trainyard.worker.transfer import Transfers, http_client

log = logging.getLogger(__name__)

AttemptKey = tuple[str, int]

_REMEMBERED_ATTEMPTS = 100_000
"""Finished attempts remembered so that a lease re-sent after its final report does not run again."""

_HTTP_CONNECTIONS = 100
"""The agent's own HTTP client's connection limit (httpx's default, made explicit)."""

_STOP_COMMANDS = {
    pb.Command.CANCEL: AttemptOutcome.CANCELLED,
    pb.Command.TIMEOUT: AttemptOutcome.TIMED_OUT,
    pb.Command.PREEMPT: AttemptOutcome.PREEMPTED,
}


class RegistrationRefused(Exception):
    """The control plane refused this worker's bootstrap token or registration."""


class Agent:
    """The worker agent; ``run`` returns once ``stop`` is set and its attempts were stopped and reported."""

    def __init__(
        self,
        cfg: WorkerConfig,
        *,
        executor: Executor | None = None,
        channel: grpc.aio.Channel | None = None,
        http: httpx.AsyncClient | None = None,
        sample_gpus: bool = True,
        http_connections: int | None = None,
    ) -> None:
        """``channel`` and ``http``: shared with other agents of this process (a simulated fleet),
        left open when this one stops; None: the agent opens and closes its own. ``sample_gpus``:
        report the node's GPU utilization (off for simulated agents, which have no GPUs to read).
        ``http_connections``: the connection limit ``http`` was made with; uploads queue for them in
        the agent, not in the client's pool (see ``Transfers``)."""
        self.cfg = cfg
        self._http_connections = http_connections
        self.executor: Executor = executor or executor_for(cfg)
        self._channel = channel
        self._http = http
        self.draining = False
        self.runners: dict[AttemptKey, AttemptRunner] = {}
        self._tasks: dict[AttemptKey, asyncio.Task[None]] = {}
        self._finished: OrderedDict[AttemptKey, None] = OrderedDict()
        self._restarted: set[AttemptKey] = set()
        self.slots = AttemptSlots(cfg.work_dir)
        self._capacity: NodeCapacity | None = None
        self._register_lock = asyncio.Lock()
        self._lease_call: grpc.aio.UnaryStreamCall[pb.LeaseRequest, pb.LeaseMessage] | None = None
        self._rpc: ControlPlane | None = None
        self._ctx: AttemptContext | None = None
        self._gpus = GpuSampler() if sample_gpus else None

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
        cfg.data_cache.mkdir(parents=True, exist_ok=True)
        # Before taking work: a previous agent's jobs must not run alongside the ones we are about to start.
        self._restarted = set(self.executor.reap_orphans(cfg.work_dir))
        # Whatever the previous run left in its slots belongs to attempts that are over for us.
        self.slots.reset()
        self._capacity = await asyncio.to_thread(detect_capacity, cfg)
        background: list[asyncio.Task[None]] = []
        async with contextlib.AsyncExitStack() as own:
            channel = self._channel
            if channel is None:
                channel = await own.enter_async_context(open_channel(cfg))
            http, connections = self._http, self._http_connections
            if http is None:
                connections = _HTTP_CONNECTIONS
                limits = httpx.Limits(max_connections=connections, max_keepalive_connections=20)
                http = await own.enter_async_context(http_client(cfg.http_timeout_s, limits))
            rpc = ControlPlane(
                channel,
                bootstrap_token=cfg.token,
                rpc_timeout_s=cfg.rpc_timeout_s,
                backoff_initial_s=cfg.backoff_initial_s,
                backoff_max_s=cfg.backoff_max_s,
            )
            rpc.on_unauthenticated = self._reregister
            self._rpc = rpc
            shipper = LogShipper(rpc, flush_s=cfg.log_flush_s)
            transfers = Transfers(
                http,
                attempts=cfg.upload_attempts,
                backoff=rpc.backoff,
                retry_for_s=cfg.upload_retry_s,
                multipart_threshold=cfg.multipart_threshold,
                part_size=cfg.multipart_part_size,
                max_in_flight=connections,
            )
            self._ctx = AttemptContext(cfg, rpc, transfers, shipper, self.executor, self.slots)
            try:
                registering = asyncio.create_task(self._register(initial=True))
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({registering, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not registering.done():
                    registering.cancel()
                    return
                stopping.cancel()
                registering.result()
                background = [
                    asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                    asyncio.create_task(self._lease_loop(), name="lease"),
                    asyncio.create_task(shipper.run(), name="log-shipper"),
                ]
                if cfg.spot_notice_url:
                    watcher = SpotNoticeWatcher(
                        http, cfg.spot_notice_url, style=cfg.spot_notice_style, interval_s=cfg.spot_poll_s
                    )
                    background.append(asyncio.create_task(self._spot_loop(watcher), name="spot-notice"))
                await stop.wait()
                await self._shutdown(background[1])
            finally:
                for runner in self.runners.values():
                    runner.kill_now()
                for task in [*background, *self._tasks.values()]:
                    task.cancel()
                await asyncio.gather(*background, *self._tasks.values(), return_exceptions=True)

    async def _shutdown(self, lease: asyncio.Task[None]) -> None:
        """Take no more work, stop the jobs with their grace, report them, then return."""
        self.draining = True
        lease.cancel()
        await self._announce_draining()
        log.info("stopping: %d attempt(s) running", len(self.runners))
        wait_s = self.cfg.preempt_grace_s + self.cfg.shutdown_timeout_s
        if self._ctx is not None:
            # Final uploads give way before the wait below ends, leaving the reports their time.
            reserve = min(self.cfg.rpc_timeout_s, self.cfg.shutdown_timeout_s / 2)
            self._ctx.upload_deadline.set(asyncio.get_running_loop().time() + wait_s - reserve)
        for runner in list(self.runners.values()):
            # Preempted, not cancelled: the user did not ask for it, and the job goes back to the queue.
            runner.request_stop(AttemptOutcome.PREEMPTED, "the worker is shutting down")
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=wait_s)
            if pending:
                log.warning("gave up waiting for %d attempt(s) to report", len(pending))

    # -- registration ----------------------------------------------------------------------------------

    def _register_request(self) -> pb.RegisterRequest:
        cap = self._capacity
        assert cap is not None
        return pb.RegisterRequest(
            name=self.cfg.name,
            hostname=socket.gethostname(),
            capacity=pb.Capacity(cpu=cap.cpus, memory=cap.memory, gpu=cap.gpus, gpu_type=cap.gpu_type or ""),
            pool=self.cfg.pool,
            region=self.cfg.region or "",
            labels=self.cfg.labels,
            version=__version__,
            data_cache=pb.DataCache(uris=cached_uris(self.cfg.data_cache)),
        )

    async def _register(self, *, initial: bool = False) -> None:
        rpc = self._rpc
        assert rpc is not None
        backoff = rpc.backoff()
        failures = 0
        while True:
            try:
                session = await rpc.register(self._register_request())
                log.info(
                    "registered as worker %s (heartbeat every %gs)",
                    session.worker_id,
                    session.heartbeat_interval_s,
                )
                return
            except grpc.aio.AioRpcError as e:
                code = e.code()
                refused = code in PERMANENT or code == grpc.StatusCode.UNAUTHENTICATED
                if initial and refused:
                    raise RegistrationRefused(f"{code.name}: {e.details()}") from e
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(
                    level,
                    "cannot register with %s (%s: %s); retrying",
                    self.cfg.server,
                    code.name,
                    e.details(),
                )
            await backoff.sleep()

    async def _reregister(self, seen_generation: int) -> None:
        rpc = self._rpc
        assert rpc is not None and self._ctx is not None
        async with self._register_lock:
            if rpc.generation != seen_generation:
                return  # someone registered again meanwhile
            log.warning("the control plane does not know this worker; registering again")
            await self._register()
        # Streams opened with the old credential would stay silent or be refused.
        self._reconnect_streams()

    def _reconnect_streams(self) -> None:
        if self._lease_call is not None:
            self._lease_call.cancel()
        if self._ctx is not None:
            self._ctx.shipper.reconnect()

    # -- loops ------------------------------------------------------------------------------------------

    def _running(self) -> list[pb.RunningAttempt]:
        return [r.running_attempt() for r in self.runners.values() if not r.forgotten]

    async def _spot_loop(self, watcher: SpotNoticeWatcher) -> None:
        notice = await watcher.wait()
        log.warning("%s: checkpointing and handing back %d attempt(s)", notice, len(self.runners))
        await self.preempt_all(f"preempted: {notice}")

    async def preempt_all(self, reason: str) -> None:
        """Take no more work and stop every attempt as preempted: each uploads its checkpoint, then
        reports, and its job goes back to the queue without using a retry."""
        self.draining = True
        await self._announce_draining()
        for runner in list(self.runners.values()):
            runner.request_stop(AttemptOutcome.PREEMPTED, reason)

    async def _announce_draining(self) -> None:
        """Tell the control plane we drain before handing work back; otherwise the scheduler may
        place the requeued job right here again, on a worker about to vanish."""
        rpc = self._rpc
        if rpc is None or rpc.session is None:
            return
        try:
            await asyncio.wait_for(rpc.heartbeat(self._running, lambda: True), self.cfg.rpc_timeout_s)
        except (grpc.aio.AioRpcError, TimeoutError) as e:
            # Not fatal: the periodic heartbeat says it too, and a lease sent here is handed back.
            log.warning("could not tell the control plane we drain: %s", e)

    async def _heartbeat_loop(self) -> None:
        rpc = self._rpc
        assert rpc is not None
        backoff = rpc.backoff()
        failing = False
        loop = asyncio.get_running_loop()
        while True:
            generation = rpc.generation
            sent = loop.time()
            try:
                resp = await rpc.heartbeat(
                    self._running,
                    lambda: self.draining,
                    lambda: cached_uris(self.cfg.data_cache),
                    self._gpus.sample if self._gpus is not None else None,
                )
            except grpc.aio.AioRpcError as e:
                if not failing:
                    log.warning("heartbeat failed (%s: %s); jobs keep running", e.code().name, e.details())
                failing = True
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    await self._reregister(generation)
                await backoff.sleep()
                continue
            except Exception:
                # Never let a surprise end the heartbeat: the control plane would declare the jobs lost.
                log.exception("heartbeat failed")
                failing = True
                await backoff.sleep()
                continue
            if failing:
                # The control plane is back; a silent network failure may have left our streams dead.
                log.info("control plane reachable again")
                failing = False
                backoff.reset()
                self._reconnect_streams()
            if not resp.known:
                await self._reregister(generation)
            for cmd in resp.commands:
                self._command(cmd)
            interval = rpc.session.heartbeat_interval_s if rpc.session else 5.0
            # A fixed cadence, not a pause after each answer: the control plane's TTL is three
            # intervals, and a slow answer (a loaded control plane) must not stretch the gap too.
            await asyncio.sleep(max(0.0, interval - (loop.time() - sent)))

    async def _lease_loop(self) -> None:
        rpc = self._rpc
        assert rpc is not None
        backoff = rpc.backoff()
        while True:
            generation = rpc.generation
            call = rpc.lease()
            self._lease_call = call
            try:
                async for msg in call:
                    backoff.reset()
                    kind = msg.WhichOneof("msg")
                    if kind == "assignment":
                        self._accept(msg.assignment)
                    elif kind == "command":
                        self._command(msg.command)
                    elif kind == "log_tail" and self._ctx is not None:
                        t = msg.log_tail
                        if t.stop:
                            self._ctx.shipper.untail(t.job_id, t.attempt)
                        else:
                            self._ctx.shipper.tail(t.job_id, t.attempt, t.offset, t.ttl_s)
                log.info("lease stream ended; reconnecting")
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    await self._reregister(generation)
                elif code != grpc.StatusCode.CANCELLED:
                    log.warning("lease stream failed (%s: %s); reconnecting", code.name, e.details())
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    call.cancel()
                    raise
                # We cancelled the call ourselves to reopen the stream.
                continue
            except Exception:
                log.exception("lease stream broke; reconnecting")
            finally:
                self._lease_call = None
            await backoff.sleep()

    # -- work -------------------------------------------------------------------------------------------

    def _accept(self, a: pb.Assignment) -> None:
        key = (a.job_id, a.attempt)
        # The control plane re-sends every leased attempt on reconnect: never start one twice.
        if key in self.runners or key in self._finished:
            return
        assert self._ctx is not None
        restarted = key in self._restarted
        runner = AttemptRunner(self._ctx, a, restarted=restarted)
        if self.draining:
            # Hand the lease back at once (as preempted: no retry used) rather than sit on it until
            # the control plane gives up on the assignment; the heartbeat tells it we are draining.
            log.info("draining: handing back %s/%d", *key)
            runner.request_stop(AttemptOutcome.PREEMPTED, "the worker is draining")
        self.runners[key] = runner
        task = asyncio.get_running_loop().create_task(runner.run(), name=f"attempt {key[0]}/{key[1]}")
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._done(key, t))

    def _done(self, key: AttemptKey, task: asyncio.Task[None]) -> None:
        self.runners.pop(key, None)
        self._tasks.pop(key, None)
        self._finished[key] = None
        if len(self._finished) > _REMEMBERED_ATTEMPTS:
            self._finished.popitem(last=False)
        if not task.cancelled() and task.exception() is not None:
            log.error("attempt %s/%d crashed", *key, exc_info=task.exception())

    def _command(self, cmd: pb.Command) -> None:
        if cmd.kind == pb.Command.DRAIN:
            if not self.draining:
                log.info("draining: no new work will be taken")
            self.draining = True
            return
        for runner in list(self.runners.values()):
            a = runner.a
            if a.job_id != cmd.job_id or (cmd.attempt and cmd.attempt != a.attempt):
                continue
            if cmd.lease_token and cmd.lease_token != a.lease_token:
                continue
            if cmd.kind == pb.Command.KILL_STALE:
                runner.kill_stale()
            elif cmd.kind in _STOP_COMMANDS:
                outcome = _STOP_COMMANDS[cmd.kind]
                runner.request_stop(outcome, cmd.reason or _DEFAULT_REASONS[outcome])


_DEFAULT_REASONS = {
    AttemptOutcome.CANCELLED: "cancelled",
    AttemptOutcome.TIMED_OUT: "timed out",
    AttemptOutcome.PREEMPTED: "preempted",
}


async def run_agent(cfg: WorkerConfig, stop: asyncio.Event | None = None) -> None:
    """Run the agent until ``stop`` is set (forever when None), then stop its jobs and return."""
    await Agent(cfg).run(stop or asyncio.Event())


def _use_pidfd_child_watcher(loop: asyncio.AbstractEventLoop) -> None:
    """Python 3.11's default child watcher starts a thread per child process; a pidfd watcher waits on
    the event loop instead, which is much cheaper when jobs are short. Process-global, so only the
    agent's own entry point sets it (Linux 5.3+; otherwise the default stays)."""
    if not hasattr(os, "pidfd_open") or sys.version_info >= (3, 12):
        return  # 3.12+ already picks a pidfd-based watcher by itself
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(loop)
        asyncio.set_child_watcher(watcher)


def main(cfg: WorkerConfig) -> None:
    """Run the agent in the foreground: SIGTERM/SIGINT stops it cleanly, a second one kills the jobs now."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(signum: int) -> None:
            if stop.is_set():
                log.warning("second %s: killing jobs now", signal.Signals(signum).name)
                task.cancel()
            else:
                log.info("%s: stopping", signal.Signals(signum).name)
                stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        _use_pidfd_child_watcher(loop)
        await run_agent(cfg, stop)

    # A second signal cancels the main task; the agent has killed its jobs by the time it surfaces.
    # asyncio's own loop, not uvloop: uvloop spawns with fork() (Python uses vfork), and its process
    # transports are not asyncio's, which the executor relies on.
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(_main())
