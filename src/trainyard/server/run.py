"""Run a control plane: REST (uvicorn) and worker gRPC on one event loop, plus the leader loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import sqlalchemy as sa
import uvicorn

from trainyard import aio
from trainyard.bus.base import BusUnavailable
from trainyard.server.api import rest_app
from trainyard.server.platform import Platform
from trainyard.server.services.logsearch import INDEX_BATCH as LOG_INDEX_BATCH
from trainyard.server.services.outbox import RELAY_BATCH
from trainyard.server.settings import Settings, write_private
from trainyard.server.worker_service import start_grpc

log = logging.getLogger("trainyard.server")
T = TypeVar("T")
# How often a follower tries to take the lead (and the leader checks it still holds it): the bound
# on how long the singleton loops stop after a leader dies.
LEADERSHIP_INTERVAL_S = 1.0
# Under a stream of submissions the scheduler waits this long between cycles, so that one cycle
# places a burst (a cycle's fixed cost is a few queries); an idle scheduler still runs at once.
SCHEDULER_MIN_GAP_S = 0.025
# After a cycle the scheduler rests this many times the CPU the cycle used: a long queue (a slow
# cycle) keeps the scheduler thread, and the GIL, busy a fifth of the time at most.
SCHEDULER_REST_FACTOR = 4.0


def cycle_gap(cpu_s: float, placed: bool) -> float:
    """How long the scheduler waits after a cycle before it runs the next one, however kicked.

    Scaled by the CPU the cycle's thread used, not by its wall time: a cycle that mostly waited
    (for a core other processes held, for the GIL, for a lock) did no work that needs bounding, and
    resting four times its wall time left the next submission on an idle fleet waiting 0.1-0.7 s
    (the dispatch stall of issue 14). The floor applies only after a cycle that placed jobs, where
    a burst of submissions is arriving: an idle timer cycle must not delay the next submission."""
    rest = SCHEDULER_REST_FACTOR * max(0.0, cpu_s)
    return max(SCHEDULER_MIN_GAP_S, rest) if placed else rest


SCHEDULER_REST_CREDIT_S = 0.010
"""CPU seconds of cycles an idle scheduler may run before it rests (see ``SchedulerRest``)."""


class SchedulerRest:
    """The rests between cycles, as a budget: over time the scheduler rests ``cycle_gap`` after
    each cycle, but the time it was idle anyway (waiting for a kick) counts towards those rests,
    up to ``credit_s`` of CPU's worth.

    Resting after every cycle held a submission on an idle fleet behind the rest of the cycle that
    the previous job's report had kicked (submit to cycle: 4.7 ms median of a 46 ms dispatch p50,
    issue 14), although the scheduler had been idle most of that time. Under a stream of kicks the
    credit is soon spent and each cycle rests its ``cycle_gap`` again: the scheduler thread stays
    busy a fifth of the time at most, plus ``credit_s`` once after a quiet spell."""

    def __init__(self, credit_s: float = SCHEDULER_REST_CREDIT_S) -> None:
        self._max_credit = SCHEDULER_REST_FACTOR * credit_s
        self._owed = -self._max_credit  # seconds of rest owed; below zero: idle time banked
        self._ended: float | None = None

    def after(self, cpu_s: float, placed: bool, started: float, ended: float) -> float:
        """The rest after a cycle that ran from ``started`` to ``ended`` (monotonic seconds)."""
        if self._ended is not None:
            self._owed -= max(0.0, started - self._ended)  # idle (or resting) since the last cycle
        self._owed = max(-self._max_credit, self._owed) + cycle_gap(cpu_s, placed=False)
        self._ended = ended
        rest = max(0.0, self._owed)
        return max(SCHEDULER_MIN_GAP_S, rest) if placed else rest


def _with_cpu(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and the CPU seconds this thread spent in it (run it in the thread it runs in)."""
    c0 = time.thread_time()
    out = fn()
    return out, time.thread_time() - c0


# Sealed chunks wait at most this long before the leader indexes them for log search.
LOG_INDEX_INTERVAL_S = 1.0


def bootstrap(settings: Settings) -> Platform:
    """Migrate the store and make sure an admin token exists in ``home/token``."""
    platform = Platform(settings)
    platform.store.migrate()
    token_file = settings.home / "token"
    if not token_file.exists() or platform.store.authenticate(token_file.read_text().strip()) is None:
        try:
            token = platform.store.create_user("admin", "default", "admin")
        except sa.exc.IntegrityError:
            # Another replica sharing the database created the admin at the same moment.
            token = platform.store.create_user("admin", "default", "admin")
        write_private(token_file, token + "\n")
    write_private(settings.home / "url", settings.base_url + "\n")
    return platform


class _QuietServer(uvicorn.Server):
    """uvicorn would take over SIGINT/SIGTERM and re-raise them after its shutdown; the caller owns
    signals here, so `yard up` can stop its workers before the control plane."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _loop(name: str, kick: object, interval: float, step: object, stop: asyncio.Event) -> None:
    """Run ``step`` whenever kicked or every ``interval``; errors are logged and retried, never fatal."""
    while not stop.is_set():
        try:
            await step()  # type: ignore[operator]
        except Exception:
            log.exception("%s loop step failed; retrying", name)
            await asyncio.sleep(min(interval, 1.0))
        if kick is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
        else:
            await kick.wait(interval)  # type: ignore[attr-defined]


async def _guarded(name: str, work: Awaitable[None]) -> None:
    try:
        await work
    except Exception:
        log.exception("%s failed", name)


class LeaderLoops:
    """The singleton loops (scheduler, reconciler, outbox relay): every replica runs them, and each
    step does its work only while this replica leads. ``hold`` set: nothing new is placed."""

    def __init__(self, platform: Platform, hold: asyncio.Event | None) -> None:
        self.p = platform
        self.hold = hold
        self.leading = asyncio.Event()
        self._estimating: asyncio.Task[None] | None = None
        self.last_gap = 0.0  # the rest after the last cycle (tests look)
        self.rest = SchedulerRest()

    def start(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """The loops as tasks, until ``stop``."""
        p, s = self.p, self.p.settings
        return [
            asyncio.create_task(_loop("leadership", None, LEADERSHIP_INTERVAL_S, self.lead_step, stop)),
            asyncio.create_task(
                _loop("scheduler", p.kick_scheduler, s.scheduler_interval, self.schedule_step, stop)
            ),
            asyncio.create_task(
                _loop("reconciler", None, max(0.05, s.heartbeat_interval / 2), self.reconcile_step, stop)
            ),
            asyncio.create_task(_loop("relay", p.kick_relay, 1.0, self.relay_step, stop)),
            asyncio.create_task(_loop("log-index", None, LOG_INDEX_INTERVAL_S, self.log_index_step, stop)),
            asyncio.create_task(_loop("retention", None, s.retention_interval, self.retention_step, stop)),
            asyncio.create_task(
                _loop("fluent-bit", None, max(0.05, s.fluent_bit_interval), self.fluent_bit_step, stop)
            ),
        ]

    async def lead_step(self) -> None:
        """Take the lead if free, or check it is still held."""
        # The singleton loops run only on the leader; the others serve REST and workers.
        p = self.p
        if await asyncio.to_thread(p.leadership.try_acquire):
            if not self.leading.is_set():
                p.replica.lead()
                self.leading.set()
                p.kick_scheduler.set()
                p.kick_relay.set()
        else:
            p.replica.follow()
            self.leading.clear()

    async def schedule_step(self) -> None:
        """One scheduler cycle; its leases and preemptions go to the workers."""
        if (self.hold is not None and self.hold.is_set()) or not self.leading.is_set():
            return
        scheduler, dispatcher = self.p.scheduler, self.p.dispatcher
        started = time.monotonic()
        leases, cpu = await asyncio.to_thread(_with_cpu, scheduler.schedule_once)
        notes = dispatcher.dispatch(leases) + dispatcher.preempt(scheduler.take_preemptions())
        if notes:
            await asyncio.to_thread(self.p.notifier.send, notes)
        if scheduler.estimate_due() and (self._estimating is None or self._estimating.done()):
            # Apart from the cycle: an estimate runs the scheduler forward many times.
            self._estimating = asyncio.create_task(
                _guarded("estimate", asyncio.to_thread(scheduler.estimate_once))
            )
        # Let kicks pile up for a moment: one cycle then places a burst of submissions together.
        self.last_gap = self.rest.after(cpu, bool(leases), started, time.monotonic())
        if self.last_gap > 0:
            await asyncio.sleep(self.last_gap)

    async def reconcile_step(self) -> None:
        """One reconciliation pass; what it changed wakes the scheduler and the relay."""
        if not self.leading.is_set():
            return
        if await asyncio.to_thread(self.p.reconciler.reconcile_once):
            self.p.kick_scheduler.set()
            self.p.kick_relay.set()

    async def fluent_bit_step(self) -> None:
        """Take in the log objects Fluent Bit wrote (agents with --log-shipper external)."""
        if not self.leading.is_set() or self.p.fluent_bit is None:
            return
        await asyncio.to_thread(self.p.fluent_bit.ingest_once)

    async def retention_step(self) -> None:
        """Archive and prune the jobs past the retention setting (small batches, off the loop)."""
        if not self.leading.is_set() or self.p.settings.retention is None:
            return
        await asyncio.to_thread(self.p.retention.prune_due)

    async def log_index_step(self) -> None:
        """Index sealed log chunks for search (apart from the workers' seals, which only queue them)."""
        if not self.leading.is_set():
            return
        share = self.p.settings.log_index_cpu
        while True:
            done, cpu = await asyncio.to_thread(_with_cpu, self.p.log_indexer.index_once)
            if done < LOG_INDEX_BATCH or not self.leading.is_set():
                return
            # A backlog: rest so that indexing takes at most ``log_index_cpu`` of a core (at 10,000
            # running jobs of a line a second each it would otherwise take all the leader has).
            await asyncio.sleep(cpu * (1.0 / share - 1.0))

    async def relay_step(self) -> None:
        """Relay every committed event onto the bus."""
        if not self.leading.is_set():
            return
        while await self.p.relay.relay_once() >= RELAY_BATCH:
            pass
        # Batch the events of the next few milliseconds into one read and one mark; live views
        # (SSE, the UI) still see a change well within their one-second promise.
        await asyncio.sleep(0.05)


def _rest_server(settings: Settings, platform: Platform) -> _QuietServer:
    config = uvicorn.Config(
        rest_app(platform),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=2,
        access_log=False,
        # No proxy in front by default (the address is loopback); behind one, TRAINYARD_PUBLIC_URL
        # is what clients are told. Each of these saves work on every request.
        proxy_headers=False,
        server_header=False,
        # No route speaks WebSocket (live views are SSE): "auto" would load a WebSocket stack of
        # 4-5 MB into every control plane, and a client's Upgrade request gets a plain HTTP answer.
        ws="none",
    )
    return _QuietServer(config)


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    hold: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop``. While ``hold`` is set nothing new is placed (workers are draining)."""
    stop = stop or asyncio.Event()
    # Every off-loop store call (asyncio.to_thread) runs in this pool: sized for the database, not
    # Python's cores + 4 (see Settings.db_threads).
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(settings.db_thread_count, thread_name_prefix="trainyard-io")
    )
    platform = await asyncio.to_thread(bootstrap, settings)
    # Live views (SSE) must not miss what is published from here on: wait until the bus listens.
    # A broker that is down is no reason not to serve: events wait in the outbox, views poll.
    try:
        await platform.bus.ready()
    except BusUnavailable as e:
        log.warning("event bus not ready (%s); starting anyway, the outbox keeps every event", e)
    grpc_server, grpc_port = await start_grpc(platform, settings.grpc_host, settings.grpc_port)
    server = _rest_server(settings, platform)
    loops = LeaderLoops(platform, hold)
    await loops.lead_step()
    platform.notifier.start(asyncio.get_running_loop(), platform.dispatcher.deliver_note)
    tasks = [asyncio.create_task(server.serve(), name="rest"), *loops.start(stop)]
    while not server.started:
        if tasks[0].done():
            await grpc_server.stop(0)
            tasks[0].result()
            raise OSError(f"cannot serve REST on {settings.host}:{settings.port}")
        await asyncio.sleep(0.02)
    log.info("control plane up: REST %s, worker gRPC %s:%d", settings.base_url, settings.grpc_host, grpc_port)
    if ready is not None:
        ready.set()
    await stop.wait()
    server.should_exit = True
    for t in tasks[1:]:
        t.cancel()
    await grpc_server.stop(1.0)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)
    platform.close()


def main(settings: Settings) -> None:
    """Run a control plane until SIGINT or SIGTERM."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    aio.run(run())
