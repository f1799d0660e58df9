"""The composition root: builds every backend from Settings and holds the operations that the REST
API, the worker service and the background loops share. Route handlers stay thin; the rules live
here and in the store."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa

from trainyard.bus.base import EventBus
from trainyard.bus.kafka import KafkaBus, KafkaBusConfig
from trainyard.bus.memory import MemoryBus
from trainyard.bus.relay import OutboxRelay
from trainyard.cache.base import STATUS_TTL_S, Cache, LogTailStore
from trainyard.cache.memory import MemoryCache
from trainyard.cache.redis import RedisCache, RedisConfig
from trainyard.cache.redis_tail import RedisLogTails
from trainyard.cache.resilient import ResilientCache, ResilientLogTails
from trainyard.cache.sql import SqlCache
from trainyard.cache.tiers import parse_tiers, tier_of
from trainyard.model.records import Job, User, Worker
from trainyard.model.spec import JobSpec
from trainyard.model.states import LIVE, TERMINAL, JobStatus, Priority
from trainyard.objects.base import ObjectNotFound
from trainyard.objects.factory import open_object_store
from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.scheduler.core import Decisions, decide
from trainyard.scheduler.eta import estimate_starts
from trainyard.scheduler.fairshare import TeamShare, accumulate
from trainyard.scheduler.snapshot import (
    PendingJob,
    Quota,
    ResourceVector,
    RunningJob,
    SchedulerConfig,
    Snapshot,
)
from trainyard.scheduler.snapshot import Team as SchedTeam
from trainyard.scheduler.snapshot import Worker as SchedWorker
from trainyard.server.absent import AbsentAttempts
from trainyard.server.group_commit import GroupCommit
from trainyard.server.hub import Kick, WorkerChannels
from trainyard.server.leader import leadership_for
from trainyard.server.logtail import LogTails
from trainyard.server.metrics import Metrics
from trainyard.server.notify import WorkerNote, notifier_for
from trainyard.server.queueboard import (
    BOARD_KEY,
    ESTIMATE_AFTER_S,
    ESTIMATE_EVERY_S,
    PUBLISH_EVERY_S,
    BoardReader,
    QueueBoard,
    waiting_positions,
)
from trainyard.server.secretbox import SecretBox, SecretUnreadable
from trainyard.server.settings import Settings, secret_key, url_secret, worker_bootstrap_token
from trainyard.server.sso import JwtVerifier, looks_like_jwt
from trainyard.server.views import iso, job_json
from trainyard.store.sql import Lease, NotFound, Placement, SqlStore, SubmitResult

log = logging.getLogger("trainyard.server")
P = ParamSpec("P")
T = TypeVar("T")

AUTH_CACHE_TTL_S = 5.0
HEARTBEAT_PERSIST_S = 5.0
RELAY_BATCH = 1000
ETA_MAX_STEPS = 16  # simulated job-end steps per estimate; later jobs get no estimate (null)
ETA_MAX_JOBS = 1000  # the first jobs of the global queue order are estimated
LOG_SLICE = 4 << 20  # bytes per log read: a 2 GB log is streamed in slices, never loaded whole
_PRIORITY_NAMES = {p.rank: p.value for p in Priority}
_TERMINAL_NAMES = frozenset(s.value for s in TERMINAL)


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        if retry_after == float("inf"):
            super().__init__("this user's tier allows no submissions")
            retry_after = 86400.0
        else:
            super().__init__(f"submission rate limit reached; retry in {retry_after:.1f}s")
        self.retry_after = retry_after


def _cache_and_tails(settings: Settings, store: SqlStore) -> tuple[Cache, LogTailStore]:
    """Redis when configured, falling back to the database (and to this replica's memory for the
    live log tail) while it is down; in-process twins on the embedded defaults."""
    ttl = 3 * settings.heartbeat_interval
    memory_tails = LogTails(settings.log_tail_bytes)
    if not settings.redis_url:
        return MemoryCache(), memory_tails
    cfg = RedisConfig(settings.redis_url)
    cache = ResilientCache(RedisCache(cfg), SqlCache(store, heartbeat_ttl_s=ttl), heartbeat_ttl_s=ttl)
    tails = ResilientLogTails(RedisLogTails(cfg, cap=settings.log_tail_bytes), memory_tails)
    return cache, tails


@dataclass(frozen=True)
class LogSlice:
    attempt: int
    offset: int
    data: bytes
    next_offset: int


class Platform:
    def __init__(self, settings: Settings, *, store: SqlStore | None = None) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.store = store or SqlStore(settings.db_url)
        self.store.max_preemptions = settings.max_preemptions
        self.objects = open_object_store(
            settings.object_store,
            home=settings.home,
            secret=url_secret(settings.home),
            public_url=settings.base_url,
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
        )
        self.cache, self.tails = _cache_and_tails(settings, self.store)
        # The status cache pays off where reads would cross the network to PostgreSQL from many
        # replicas; on the embedded defaults a SQLite read is as cheap as the cache's bookkeeping.
        self.status_cache = bool(settings.redis_url)
        if self.status_cache:
            self.store.on_commit = self.cache.invalidate_status
        self.tiers = parse_tiers(settings.rate_tiers)
        tier_of(self.tiers, None, settings.default_tier)  # an undefined default tier fails at start-up
        self.bus: EventBus = (
            KafkaBus(KafkaBusConfig(settings.kafka_bootstrap)) if settings.kafka_bootstrap else MemoryBus()
        )
        self.relay = OutboxRelay(self.store, self.bus, batch=RELAY_BATCH, on_published=self._published)
        self.channels = WorkerChannels()
        self.kick_scheduler = Kick()
        self.kick_relay = Kick()
        self.metrics = Metrics()
        self.metrics.add_queue_collector(self._queue_snapshot)
        self.bootstrap_token = worker_bootstrap_token(settings.home)
        self.secret_box = SecretBox(secret_key(settings))
        self.started_at = time.time()
        # worker credential -> (worker, cache expiry); a death or re-registration evicts at once
        self._worker_tokens: dict[str, tuple[Worker, float]] = {}
        self._auth_cache: dict[str, tuple[User, float]] = {}
        self.sso = JwtVerifier(settings, self._provision_user) if settings.jwks_url else None
        self._reasons: dict[str, str] = {}  # pending reasons as last written
        self.scheduler_config = SchedulerConfig(half_life_s=settings.fair_share_half_life)
        self._history: dict[str, ResourceVector] = {}  # team -> decayed usage (leader's memory)
        self._history_at = 0.0
        self._preempting: dict[str, float] = {}  # job -> when its preempt command was issued
        self._preempt_queue: list[tuple[Any, str]] = []
        self._claims: dict[str, tuple[str, ...]] = {}  # job -> workers held for it (see schedule_once)
        self.shares: dict[str, TeamShare] = {}
        self.board = QueueBoard()  # the leader's, published for every replica
        self._board_published = 0.0
        self._last_cycle: tuple[Snapshot, Decisions] | None = None  # input of the next estimate
        self._reader = BoardReader()  # this replica's copy of the published board
        self._reader_lock = asyncio.Lock()
        self.writes = GroupCommit(self.store)
        self._beats_persisted = 0.0
        self._cached_uris: dict[str, tuple[str, ...]] = {}  # worker -> data cache as last written
        self._checkpoints: dict[tuple[str, int], float] = {}  # (job, attempt) -> checkpoint time written
        self._held: dict[tuple[str, int], float] = {}  # (job, attempt) -> last heartbeat that listed it
        self.absent = AbsentAttempts()  # RUNNING attempts a live worker stopped listing (reconciler)
        self.leadership = leadership_for(settings.db_url, settings.home)
        self.notifier = notifier_for(settings.db_url)
        self._tasks: set[asyncio.Task[None]] = set()
        self.leader_since = time.time()
        self.is_leader = False
        self._store_down = False
        self._store_back_at = 0.0  # when the reconciler reached the store again after an outage

    async def authenticate(self, token: str) -> User | None:
        """Token → user, cached for a few seconds: a revoked token stops working within the TTL."""
        now = time.monotonic()
        hit = self._auth_cache.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        if self.sso is not None and looks_like_jwt(token):
            found: tuple[User, float | None] | None = await self.sso.verify(token)
        else:
            found = await self.db(self.store.token_user, token)
        if found is None:
            return None
        user, expires_at = found
        if len(self._auth_cache) > 10_000:
            self._auth_cache.clear()
        ttl = AUTH_CACHE_TTL_S if expires_at is None else min(AUTH_CACHE_TTL_S, expires_at - time.time())
        self._auth_cache[token] = (user, now + ttl)  # an expiring token is not honoured past its expiry
        return user

    async def _provision_user(self, name: str, team: str, role: str) -> User:
        return await self.db(self.store.provision_user, name, team, role)

    def forget_user_tokens(self, name: str) -> None:
        """A token of ``name`` was revoked: this replica stops honouring it now (others within
        ``AUTH_CACHE_TTL_S``)."""
        for token, (user, _) in list(self._auth_cache.items()):
            if user.name == name:
                self._auth_cache.pop(token, None)

    async def audit(
        self, actor: User, action: str, target: str, team: str | None, details: dict[str, Any]
    ) -> None:
        """Record who did what (after it succeeded): cancels, restarts, drains, team, user, token and
        secret changes."""
        await self.db(self.store.audit, actor.name, action, target, team, details)

    def held_seen(self, running: list[tuple[str, int, str]]) -> None:
        """A heartbeat listed these attempts: their worker has them, even if not started yet."""
        now = time.time()
        for job_id, attempt, _ in running:
            self._held[(job_id, attempt)] = now

    async def note_checkpoints(self, running: Iterable[pb.RunningAttempt]) -> None:
        """Persist the checkpoint times a heartbeat reports, when they moved (every few minutes per
        job, not every beat), so the leader's preemption choice sees them whichever replica it is."""
        moved = []
        for r in running:
            key = (r.job_id, r.attempt)
            if r.last_checkpoint_at > 0 and self._checkpoints.get(key, 0.0) < r.last_checkpoint_at:
                moved.append((r.job_id, r.attempt, r.last_checkpoint_at))
        if moved:
            await self.db(self.store.set_checkpoint_times, moved)
            if len(self._checkpoints) > 100_000:
                self._checkpoints.clear()
            self._checkpoints.update({(j, a): t for j, a, t in moved})

    async def note_cached_uris(self, worker_id: str, uris: Iterable[str]) -> None:
        """Persist a worker's data cache when it changed (agents send it with every heartbeat)."""
        held = tuple(sorted(set(uris)))
        if self._cached_uris.get(worker_id) != held:
            await self.db(self.store.set_cached_uris, worker_id, held)
            self._cached_uris[worker_id] = held

    def forget_worker(self, worker_id: str) -> None:
        # Called from the reconciler's thread too: iterate over a copy, remove tolerantly.
        for token, (w, _) in list(self._worker_tokens.items()):
            if w.id == worker_id:
                self._worker_tokens.pop(token, None)

    # ---- drains ----------------------------------------------------------------------------------
    async def drain(self, ref: str, deadline_s: float) -> Worker | None:
        """Drain a worker (id or name): nothing new goes there, and its running attempts are preempted
        (checkpointed, requeued without using a retry) once ``deadline_s`` has passed. None: unknown."""
        worker = await self.db(self.store.drain_worker, ref, time.time() + max(0.0, deadline_s))
        if worker is None:
            return None
        self.forget_worker(worker.id)  # its next heartbeat must see DRAINING, not a cached ALIVE
        self.channels.send(worker.id, pb.LeaseMessage(command=pb.Command(kind=pb.Command.DRAIN)))
        self.kick_scheduler.set()
        return worker

    async def drain_commands(
        self, worker: Worker, draining: bool, running: list[tuple[str, int, str]]
    ) -> list[pb.Command]:
        """A heartbeat's drain business: an agent that drains itself (a spot notice) is marked
        DRAINING; a drained one is told to take no work and, past its deadline, to preempt its
        attempts. Sent on every heartbeat until done, so a lost message or a restarted control plane
        does not matter (the agent ignores repeats)."""
        if draining and worker.status == "ALIVE":
            drained = await self.db(self.store.drain_worker, worker.id, None)
            self.forget_worker(worker.id)
            self.kick_scheduler.set()
            worker = drained or worker
        if worker.status != "DRAINING":
            return []
        cmds = [pb.Command(kind=pb.Command.DRAIN)]
        if worker.drain_deadline is not None and worker.drain_deadline <= time.time():
            cmds += [
                pb.Command(
                    kind=pb.Command.PREEMPT,
                    job_id=job_id,
                    attempt=attempt,
                    lease_token=token,
                    reason="preempted: the worker is being drained",
                )
                for job_id, attempt, token in running
            ]
        return cmds

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking store call off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _changed(self) -> None:
        self.kick_relay.set()

    # ---- jobs ----------------------------------------------------------------------------------
    def can_see(self, user: User, job: Job) -> bool:
        return user.is_admin or job.team == user.team

    async def visible_job(self, user: User, job_id: str) -> Job:
        job = await self.db(self.store.get_job, job_id)
        if job is None or not self.can_see(user, job):
            raise NotFound(job_id)
        return job

    async def job_view(self, user: User, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}: from the status cache when it holds the job, else from the store (and
        cached for the next reader). The cache is invalidated after every commit that changes a job."""
        if not self.status_cache:
            return await self.with_queue_info(job_json(await self.visible_job(user, job_id)))
        cached, ticket = self.cache.get_status(job_id)
        if cached is not None and (user.is_admin or cached.get("team") == user.team):
            return await self.with_queue_info(cached)
        job = await self.visible_job(user, job_id)
        view = job_json(job)
        self.cache.fill_status(job_id, view, ticket, STATUS_TTL_S)
        return await self.with_queue_info(view)

    async def with_queue_info(self, view: dict[str, Any]) -> dict[str, Any]:
        """A pending job's view with its queue position and estimated start, from the leader's board
        (never cached with the view: the board moves every cycle)."""
        if view["status"] != JobStatus.PENDING.value:
            return view
        info = (await self.queue_board()).lookup(view["id"])
        return {
            **view,
            "queue_position": info["queue_position"],
            "estimated_start_at": iso(info["estimated_start_at"]),
        }

    async def queue_board(self) -> QueueBoard:
        if self.is_leader:
            return self.board
        if self._reader.stale():
            async with self._reader_lock:
                if self._reader.stale():
                    got = await self.db(self.store.get_scheduler_state, BOARD_KEY)
                    self._reader.replace(QueueBoard.from_json(got[0]) if got else QueueBoard())
        return self._reader.board

    def _check_rate(self, user: User) -> None:
        tier = tier_of(self.tiers, user.tier, self.settings.default_tier)
        if not tier.unlimited:
            wait = self.cache.take(f"submit:tier:{user.name}", tier.rate_per_s, tier.burst)
            if wait > 0:
                raise RateLimited(wait)
        if self.settings.submit_rate > 0:
            wait = self.cache.take(
                f"submit:{user.name}", self.settings.submit_rate, self.settings.submit_burst
            )
            if wait > 0:
                raise RateLimited(wait)

    async def submit(self, user: User, spec: JobSpec, idempotency_key: str | None) -> SubmitResult:
        self._check_rate(user)
        store = self.store
        try:
            job = await self.writes.run(lambda conn: store.insert_job_in(conn, user, spec, idempotency_key))
            result = SubmitResult(job=job, created=True)
        except sa.exc.IntegrityError:
            if idempotency_key is None:
                raise
            result = await self.db(store.replay, user, spec, idempotency_key)
        if result.created:
            self.metrics.submitted.inc()
            self.kick_scheduler.set()
            self._changed()
        return result

    async def cancel(self, user: User, job_id: str) -> Job:
        await self.visible_job(user, job_id)
        if not user.can_submit:
            raise PermissionError("viewers cannot cancel jobs")
        job = await self.db(self.store.cancel, job_id, user.name)
        worker = job.worker_id if job.status is JobStatus.CANCELLING and job.lease_token else None
        if worker and not self.channels.send(worker, _cancel_message(job, f"cancelled by {user.name}")):
            # Its lease stream is on another replica (or reconnecting): tell the others.
            note = WorkerNote(worker, "cancel", ((job.id, job.attempt),))
            await self.db(self.notifier.send, [note])
        if job.gang_id is not None:
            await self.push_gang_stops(job.id)
        self._changed()
        return job

    def deliver_note(self, note: WorkerNote) -> None:
        """Another replica has something for a worker: deliver it if its lease stream is here."""
        if self.channels.connected(note.worker_id):
            task = asyncio.get_running_loop().create_task(self._deliver(note))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, note: WorkerNote) -> None:
        wanted = set(note.jobs)
        if note.kind == "lease":
            for lease in await self.db(self.store.leased_to, note.worker_id):
                if (lease.job_id, lease.attempt) in wanted:
                    msg = pb.LeaseMessage(assignment=self.build_assignment(lease))
                    self.channels.send(note.worker_id, msg)
        elif note.kind == "preempt":
            for job_id, attempt in wanted:
                job = await self.db(self.store.get_job, job_id)
                if job is not None and job.attempt == attempt and job.status in LIVE and job.lease_token:
                    msg = pb.LeaseMessage(
                        command=pb.Command(
                            kind=pb.Command.PREEMPT,
                            job_id=job.id,
                            attempt=job.attempt,
                            lease_token=job.lease_token,
                            reason="preempted by the scheduler",
                        )
                    )
                    self.channels.send(note.worker_id, msg)
        elif note.kind == "cancel":
            for job_id, attempt in wanted:
                job = await self.db(self.store.get_job, job_id)
                if job is not None and job.attempt == attempt and job.status is JobStatus.CANCELLING:
                    self.channels.send(note.worker_id, _cancel_message(job, "cancel requested"))

    async def restart(self, user: User, job_id: str) -> Job:
        job = await self.visible_job(user, job_id)
        if not user.manages(job.team) and (job.user != user.name or not user.can_submit):
            raise PermissionError("only the job's owner, a team admin or an admin can restart it")
        job = await self.db(self.store.restart, job_id, user.name)
        self.kick_scheduler.set()
        self._changed()
        return job

    # ---- logs ----------------------------------------------------------------------------------
    def _read_chunks(self, job_id: str, attempt: int, since: int, limit: int) -> tuple[int, bytes]:
        """Sealed bytes from ``since``, about ``limit`` of them at most: (offset, bytes)."""
        out = bytearray()
        start: int | None = None
        for c in self.store.log_chunks(job_id, attempt):
            if c.end_offset <= since:
                continue
            if len(out) >= limit or (start is not None and c.start_offset != start + len(out)):
                break  # enough for one slice, or a hole in the index (the live tail may fill it)
            try:
                raw = gzip.decompress(self.objects.get(c.object_key))
            except (ObjectNotFound, OSError) as e:
                log.warning("log chunk %s unreadable: %s", c.object_key, e)
                break
            lo = max(since, c.start_offset) - c.start_offset
            if start is None:
                start = c.start_offset + lo
            out += raw[lo:]
        return (start if start is not None else since), bytes(out)

    async def read_log(self, job: Job, attempt: int | None, since: int, limit: int = LOG_SLICE) -> LogSlice:
        """One slice of an attempt's log from ``since``: sealed chunks first, then the live tail."""
        number = attempt if attempt is not None else job.attempt
        if number <= 0:
            return LogSlice(0, since, b"", since)
        offset, data = await self.db(self._read_chunks, job.id, number, since, limit)
        pos = offset + len(data)
        if len(data) < limit:
            t_off, t_data = self.tails.read(job.id, number, max(pos, since))
            if t_data:
                if not data:
                    offset = t_off
                elif t_off > pos:
                    data += f"\n[trainyard: {t_off - pos} bytes of log unavailable]\n".encode()
                data += t_data
                pos = t_off + len(t_data)
        return LogSlice(number, offset, data, max(pos, since))

    async def log_end(self, job: Job, attempt: int | None) -> int:
        """How many bytes the attempt's log holds now (sealed or live)."""
        number = attempt if attempt is not None else job.attempt
        if number <= 0:
            return 0
        chunks = await self.db(self.store.log_chunks, job.id, number)
        return max([c.end_offset for c in chunks] + [self.tails.end(job.id, number) or 0])

    async def tail_lines(self, job: Job, attempt: int | None, lines: int) -> LogSlice:
        """The last ``lines`` lines, read backwards from the end so a huge log is never loaded whole."""
        number = attempt if attempt is not None else job.attempt
        end = await self.log_end(job, number)
        start, data = end, b""
        while start > 0 and data.count(b"\n") <= lines:
            lo = max(0, start - max(LOG_SLICE, len(data)))
            sl = await self.read_log(job, number, lo, limit=start - lo)
            got = sl.data[: max(0, start - sl.offset)]
            if not got:
                break
            data, start = got + data, sl.offset
        body = data[:-1] if data.endswith(b"\n") else data
        cut = len(body)
        for _ in range(lines):
            cut = body.rfind(b"\n", 0, cut)
            if cut < 0:
                break
        first = len(data) if lines == 0 else (0 if cut < 0 else cut + 1)
        return LogSlice(number, start + first, data[first:], end)

    def attempt_live(self, job: Job, attempt: int) -> bool:
        if attempt != job.attempt:
            return False
        return job.status in LIVE

    # ---- artifacts and bundles -----------------------------------------------------------------
    def presign_get(self, key: str) -> str:
        return self.objects.presign(key, "GET", self.settings.url_ttl)

    # ---- scheduling ----------------------------------------------------------------------------
    def _alive(self, worker_id: str, registered_at: float) -> bool:
        last = self.cache.last_heartbeat(worker_id)
        if last is not None:
            return True
        grace = 3 * self.settings.heartbeat_interval
        # Heartbeats cannot be taken while the store is down (the worker's credential is looked up
        # there), so a store outage is treated like a restart: agents get time to check in again.
        since = max(self.leader_since, self._store_back_at)
        if registered_at >= since:
            return time.time() - registered_at < grace
        # Registered with an earlier control-plane process (this one restarted): its agents are
        # reconnecting with backoff, so give them longer before declaring their jobs lost.
        return time.time() - since < max(grace, self.settings.restart_grace)

    def schedule_once(self) -> list[Lease]:
        """One scheduler cycle (blocking; run in a thread): snapshot → pure decisions → guarded
        leases, and preempt commands queued for ``take_preemptions``."""
        t0 = time.perf_counter()
        now = time.time()
        store = self.store
        pending = store.pending_for_scheduling(now)
        if not pending:
            self._reasons = {}
            self._post_board(QueueBoard(as_of=now), now, force=bool(self.board.positions))
            self._last_cycle = None
            return []
        running = store.running_for_scheduling()
        snapshot = Snapshot(
            now=now,
            workers=tuple(self._scheduling_workers()),
            pending=tuple(_pending_job(r, self._claims.get(r.id, ())) for r in pending),
            running=tuple(self._running_job(r, now) for r in running),
            teams=tuple(self._scheduling_teams(running, now)),
            config=self.scheduler_config,
        )
        decisions = decide(snapshot)
        # A job that preempted others holds the workers it freed until it is placed; otherwise the
        # requeued victim would take them back and be evicted again, forever.
        placed_ids = {p.job_id for p in decisions.placements}
        waiting = {r.id for r in pending} - placed_ids
        self._claims = {j: w for j, w in {**self._claims, **decisions.claims}.items() if j in waiting}
        leases = store.lease(
            Placement(p.job_id, p.worker_id, p.gpu_indices, p.attempt, p.rank, p.world_size)
            for p in decisions.placements
        )
        by_id = {r.id: r for r in running}
        for victim in decisions.preemptions:
            row = by_id.get(victim.job_id)
            if row is None or victim.job_id in self._preempting:
                continue
            self._preempting[victim.job_id] = now
            log.info(
                "preempting %s on %s (%s, for %s)",
                victim.job_id,
                row.worker_id,
                victim.reason,
                victim.for_job,
            )
            self._preempt_queue.append((row, f"preempted ({victim.reason}) for job {victim.for_job}"))
            self.metrics.preemptions.labels(victim.reason).inc()
        self.shares = decisions.shares
        board = QueueBoard(
            positions=waiting_positions(decisions.queue_position, {r.id: r.team for r in pending}, waiting),
            starts={j: t for j, t in self.board.starts.items() if j in waiting},
            as_of=now,
            estimated_at=self.board.estimated_at,
        )
        self._post_board(board, now)
        oldest = min((r.queued_at for r in pending if r.id in waiting), default=now)
        self._last_cycle = (snapshot, decisions) if now - oldest >= ESTIMATE_AFTER_S else None
        # Write only reasons that changed since the last cycle; most cycles change few.
        changed = {j: r for j, r in decisions.reasons.items() if self._reasons.get(j) != r}
        store.set_pending_reasons(changed)
        self._reasons = dict(decisions.reasons)
        placed = {p.id: p for p in pending}
        crossed = {p.job_id for p in decisions.placements if p.cross_region and p.rank == 0}
        for lease in leases:
            if lease.rank:
                continue  # a gang waited once
            if lease.job_id in crossed:
                self.metrics.cross_region.inc()
            p = placed[lease.job_id]
            self.metrics.wait.labels(p.pool or "default", _PRIORITY_NAMES.get(p.priority, "normal")).observe(
                max(0.0, now - p.queued_at)
            )
        self.metrics.cycle.observe(time.perf_counter() - t0)
        return leases

    def _post_board(self, board: QueueBoard, now: float, force: bool = False) -> None:
        self.board = board
        if force or now - self._board_published >= PUBLISH_EVERY_S:
            self.store.put_scheduler_state(BOARD_KEY, board.to_json())
            self._board_published = now

    def estimate_due(self) -> bool:
        """An estimate is worth its cost once jobs have waited a while (a queue that drains within
        seconds raises no "when will it start?") and the last one is ``ESTIMATE_EVERY_S`` old."""
        return self._last_cycle is not None and time.time() - self.board.estimated_at >= ESTIMATE_EVERY_S

    def estimate_once(self) -> None:
        """Estimated starts for the last cycle's waiting jobs (blocking; run in a thread apart from
        the scheduler's, which it does not delay: ``decide`` is pure and the snapshot immutable)."""
        last = self._last_cycle
        if last is None:
            return
        snapshot, decisions = last
        estimates = estimate_starts(snapshot, first=decisions, max_steps=ETA_MAX_STEPS, max_jobs=ETA_MAX_JOBS)
        # Merged into whatever board the scheduler has posted since: only jobs still waiting.
        board = self.board
        starts = {j: estimates.start_at.get(j) for j in board.positions}
        self.board = QueueBoard(board.positions, starts, board.as_of, estimated_at=snapshot.now)
        self.store.put_scheduler_state(BOARD_KEY, self.board.to_json())
        self._board_published = time.time()

    def _scheduling_workers(self) -> list[SchedWorker]:
        out = []
        for w in self.store.list_workers(include_dead=False):
            out.append(
                SchedWorker(
                    id=w.id,
                    cpu=w.cpu,
                    memory=w.memory,
                    gpu=w.gpu,
                    gpu_type=w.gpu_type,
                    pool=w.pool,
                    region=w.region,
                    spot=w.labels.get("spot") == "true",
                    schedulable=w.status == "ALIVE" and self._alive(w.id, w.registered_at),
                    labels=dict(w.labels),
                    cached_uris=frozenset(w.cached_uris),
                )
            )
        return out

    def _running_job(self, r: Any, now: float) -> RunningJob:
        started = r.started_at or r.scheduled_at or now
        preempting = self._preempting.get(r.id)
        return RunningJob(
            # A gang's ranks are one job to the scheduler (preempted, and counted, together).
            id=r.gang_id or r.id,
            replica=r.replica_rank,
            team=r.team,
            worker_id=r.worker_id,
            priority=r.priority,
            cpu=r.cpu,
            memory=r.memory,
            gpu=r.gpu,
            gpu_indices=tuple(r.gpu_indices),
            preemptible=r.preemptible,
            started_at=started,
            last_checkpoint_at=r.last_checkpoint_at,
            max_runtime_s=r.max_runtime,
            terminating=r.status == JobStatus.CANCELLING.value or preempting is not None,
        )

    def _scheduling_teams(self, running: list[Any], now: float) -> list[SchedTeam]:
        """Teams with their quotas and a usage history decayed with the configured half-life (kept by
        the leader in memory: a new leader starts the history afresh). Teams are read every cycle, not
        cached: a weight or quota changed through any replica applies from the next cycle (one small
        SELECT; teams are few)."""
        teams = {t.name: t for t in self.store.list_teams()}
        current: dict[str, ResourceVector] = {}
        for r in running:
            current[r.team] = current.get(r.team, ResourceVector()) + ResourceVector(r.cpu, r.memory, r.gpu)
        elapsed = now - self._history_at if self._history_at else 0.0
        self._history_at = now
        half_life = self.scheduler_config.half_life_s
        for name in set(self._history) | set(current):
            self._history[name] = accumulate(
                self._history.get(name, ResourceVector()),
                current.get(name, ResourceVector()),
                elapsed,
                half_life,
            )
        out = []
        for name in set(teams) | set(current):
            t = teams.get(name)
            quota = None
            if t is not None and (
                t.cpu_quota is not None
                or t.memory_quota is not None
                or t.gpu_quota is not None
                or t.gpu_type_quotas
            ):
                quota = Quota(
                    cpu=t.cpu_quota,
                    memory=t.memory_quota,
                    gpu=t.gpu_quota,
                    gpu_by_type=dict(t.gpu_type_quotas),
                )
            out.append(
                SchedTeam(
                    name=name,
                    weight=t.weight if t is not None else 1.0,
                    quota=quota,
                    usage_history=self._history.get(name, ResourceVector()),
                )
            )
        return out

    async def push_gang_stops(self, gang_id: str) -> None:
        """A gang rank ended: tell the workers of the ranks that must now stop, at once where their
        lease stream is here (elsewhere their next heartbeat carries the command)."""
        for cmd in await self.db(self.store.gang_stops, gang_id):
            if cmd.worker_id is None:
                continue
            kind = pb.Command.PREEMPT if cmd.kind == "preempt" else pb.Command.CANCEL
            self.channels.send(
                cmd.worker_id,
                pb.LeaseMessage(
                    command=pb.Command(
                        kind=kind,
                        job_id=cmd.job_id,
                        attempt=cmd.attempt,
                        lease_token=cmd.lease_token,
                        reason=cmd.reason,
                    )
                ),
            )

    def take_preemptions(self) -> list[WorkerNote]:
        """Send the preempt commands of the last cycles; notes for workers on other replicas."""
        notes = []
        while self._preempt_queue:
            row, reason = self._preempt_queue.pop(0)
            msg = pb.LeaseMessage(
                command=pb.Command(
                    kind=pb.Command.PREEMPT,
                    job_id=row.id,
                    attempt=row.attempt,
                    lease_token=row.lease_token or "",
                    reason=reason,
                )
            )
            if not self.channels.send(row.worker_id, msg):
                notes.append(WorkerNote(row.worker_id, "preempt", ((row.id, row.attempt),)))
        # A victim that has not stopped within the grace (plus slack) may be chosen and told again.
        horizon = time.time() - (self.settings.cancel_grace + 3 * self.settings.heartbeat_interval + 10)
        self._preempting = {j: t for j, t in self._preempting.items() if t > horizon}
        return notes

    def dispatch(self, leases: list[Lease]) -> list[WorkerNote]:
        """Send each lease down its worker's stream; the leases of workers connected to another
        replica come back as notes for the notifier."""
        remote: dict[str, list[tuple[str, int]]] = {}
        for lease in leases:
            msg = pb.LeaseMessage(assignment=self.build_assignment(lease))
            if not self.channels.send(lease.worker_id, msg):
                remote.setdefault(lease.worker_id, []).append((lease.job_id, lease.attempt))
        if leases:
            self._changed()
        return [WorkerNote(w, "lease", tuple(jobs)) for w, jobs in remote.items()]

    def build_assignment(self, lease: Lease) -> pb.Assignment:
        # The stored spec is the normalized one this control plane wrote: read it as plain data
        # (validating it again would cost more than the rest of the assignment).
        spec = lease.spec
        env = dict(spec.get("env") or {})
        env.update(
            {
                "TRAINYARD_JOB_ID": lease.job_id,
                "TRAINYARD_ATTEMPT": str(lease.attempt),
                "TRAINYARD_JOB_NAME": lease.name or "",
                "TRAINYARD_TEAM": lease.team,
                "TRAINYARD_USER": lease.user,
                "TRAINYARD_RANK": str(lease.rank),
                "TRAINYARD_WORLD_SIZE": str(lease.world_size),
            }
        )
        if lease.gang_id:
            # torch.distributed's env:// rendezvous reads these (and RANK/WORLD_SIZE, set alike).
            env.update(
                {
                    "TRAINYARD_GANG_ID": lease.gang_id,
                    "MASTER_ADDR": lease.master_addr,
                    "MASTER_PORT": str(lease.master_port),
                    "RANK": str(lease.rank),
                    "WORLD_SIZE": str(lease.world_size),
                }
            )
        names = list(spec.get("secrets") or ())
        if names:
            # Rare, so read here on demand (a few ms, on the caller's thread) rather than in every lease.
            env.update(self.secret_values(lease.team, names))
        return pb.Assignment(
            secret_env=names,
            job_id=lease.job_id,
            attempt=lease.attempt,
            lease_token=lease.lease_token,
            command=list(spec["command"]),
            env=env,
            gpu_indices=lease.gpu_indices,
            cpu=lease.cpu,
            memory=lease.memory,
            max_runtime_s=lease.max_runtime,
            workdir_url=self.presign_get(spec["workdir"]) if spec.get("workdir") else "",
            cwd=spec.get("cwd") or "",
            artifact_paths=list(spec.get("artifacts") or ()),
            resume_from_url=self.presign_get(lease.resume_key) if lease.resume_key else "",
            image=spec.get("image") or "",
            name=lease.name or "",
            no_network=spec.get("network") is False,
        )

    def secret_values(self, team: str, names: list[str]) -> dict[str, str]:
        """Decrypted values of a team's secrets; a secret deleted since the submit is left unset
        (the job sees it missing, as it would a revoked credential)."""
        sealed = self.store.secret_ciphertexts(team, names)
        out = {}
        for name, ciphertext in sealed.items():
            try:
                out[name] = self.secret_box.open(team, name, ciphertext)
            except SecretUnreadable as e:
                log.error("%s; the job runs without it", e)
        return out

    # ---- reconciler ----------------------------------------------------------------------------
    def reconcile_once(self) -> list[str]:
        """Dead workers' attempts → LOST (then retried or failed); overdue runs; unconfirmed cancels."""
        now = time.time()
        touched: list[str] = []
        beats: dict[str, float] = {}
        try:
            alive = self.store.list_workers(include_dead=False)
        except sa.exc.DBAPIError:
            self._store_down = True
            raise
        if self._store_down:
            self._store_down = False
            self._store_back_at = now
            log.warning(
                "state store reachable again; workers get %gs to check in", self.settings.restart_grace
            )
        for w in alive:
            last = self.cache.last_heartbeat(w.id)
            if last is not None:
                beats[w.id] = last
                continue
            if not self._alive(w.id, w.registered_at):
                log.warning("worker %s (%s) missed its heartbeats; declaring it dead", w.name, w.id)
                self.metrics.heartbeats_missed.inc()
                touched += self.store.mark_worker_dead(w.id)
                self.forget_worker(w.id)
        # Heartbeats live in the cache; the table's copy is for display, so refresh it only now and then.
        if now - self._beats_persisted >= HEARTBEAT_PERSIST_S:
            self.store.touch_workers(beats)
            self._beats_persisted = now
        grace = self.settings.cancel_grace + 2 * self.settings.heartbeat_interval
        touched += self._requeue_undelivered(now)
        touched += self.absent.reconcile(
            self.store.live_attempts, self.store.lose_attempt, now, self.settings.heartbeat_interval
        )
        touched += self.store.expire_overdue(now, grace)
        touched += self.store.finish_stuck_cancels(now, grace + 30)
        return touched

    def _requeue_undelivered(self, now: float) -> list[str]:
        """A lease whose worker never mentions it (the assignment was lost on the way) is an
        infrastructure failure after a few heartbeats, not a job stuck in SCHEDULED forever."""
        window = 3 * self.settings.heartbeat_interval + 5.0
        stuck = [
            a
            for a in self.store.live_attempts()
            if a.status is JobStatus.SCHEDULED
            and now - self._held.get((a.job_id, a.attempt), 0.0) > window
            and now - a.scheduled_at > window
            and now - self.leader_since > window
        ]
        out = []
        for a in stuck:
            if self.store.requeue_undelivered(a.job_id, a.attempt, a.lease_token):
                log.warning(
                    "job %s attempt %d never reached worker %s; requeued", a.job_id, a.attempt, a.worker_id
                )
                out.append(a.job_id)
        if len(self._held) > 100_000:
            # Runs in the reconciler's thread while heartbeats add entries: iterate over a copy.
            self._held = {k: v for k, v in list(self._held.items()) if now - v < window}
        return out

    # ---- outbox relay --------------------------------------------------------------------------
    async def relay_once(self) -> int:
        """One batch of committed events onto the bus (0 while the bus is down: they wait)."""
        return await self.relay.run_once()

    def _published(self, payloads: list[dict[str, Any]]) -> None:
        for payload in payloads:
            if payload.get("to_status") in _TERMINAL_NAMES:
                self.metrics.finished.labels(payload["to_status"]).inc()

    # ---- views ---------------------------------------------------------------------------------
    def _queue_snapshot(self) -> dict[str, Any]:
        pending: dict[str, int] = {}
        for pool, _team, n in self.store.pending_by_pool_team():
            pending[pool or "default"] = pending.get(pool or "default", 0) + n
        return {
            "by_status": self.store.count_by_status(),
            "pending_by_pool": pending,
            "outbox_lag": self.store.outbox_lag(),
        }


def _pending_job(r: Any, claimed: tuple[str, ...]) -> PendingJob:
    return PendingJob(
        id=r.id,
        team=r.team,
        user=r.user_name,
        priority=r.priority,
        queued_at=r.queued_at,
        cpu=r.cpu,
        memory=r.memory,
        gpu=r.gpu,
        gpu_type=r.gpu_type,
        pool=r.pool,
        region=r.region,
        require_region=r.require_region,
        data_uris=tuple(r.data_uris or ()),
        preemptible=r.preemptible,
        replicas=r.replicas,
        max_runtime_s=r.max_runtime,
        attempt=r.attempt,
        claimed_workers=claimed,
    )


def _cancel_message(job: Job, reason: str) -> pb.LeaseMessage:
    return pb.LeaseMessage(
        command=pb.Command(
            kind=pb.Command.CANCEL,
            job_id=job.id,
            attempt=job.attempt,
            lease_token=job.lease_token or "",
            reason=reason,
        )
    )
