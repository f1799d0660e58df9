"""Jobs: submit (rate limits, idempotency), cancel, restart, and the views of jobs and their events.

Visibility is one rule: an admin sees every job, anyone else their team's. A job the caller may not
see is answered as one that does not exist (``NotFound``), so ids of other teams cannot be probed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from trainyard.bus.base import EventBus
from trainyard.cache.base import STATUS_TTL_S, Cache, StatusTicket
from trainyard.cache.tiers import Tier, tier_of
from trainyard.model.records import Event, Job, User
from trainyard.model.spec import JobSpec
from trainyard.model.states import JobStatus
from trainyard.server.group_commit import GroupCommit
from trainyard.server.hub import Kick
from trainyard.server.metrics import Metrics
from trainyard.server.services.blocking import off_loop
from trainyard.server.services.board import QueueBoards
from trainyard.server.services.dispatch import Dispatcher
from trainyard.server.services.files import FileService
from trainyard.server.services.tenancy import TenancyService
from trainyard.server.settings import Settings
from trainyard.server.views import iso, job_json
from trainyard.store import Conflict, JobFilter, NotFound, SubmitResult

if TYPE_CHECKING:
    from trainyard.server.services.retention import RetentionService
    from trainyard.store.ports import JobsStore

log = logging.getLogger("trainyard.server")

JOB_TOPICS = frozenset({"job.events", "job.submitted"})
"""The bus topics that carry job events (a hint to re-read them from the store)."""

SERVED_POOLS_TTL_S = 1.0
"""How long a read of the pools that live workers serve is trusted (``ServedPools``)."""

UNSERVED_KICK_DELAY_S = 1.0
"""A job in a pool that no live worker serves wakes the scheduler this much later (the scheduler's
default idle interval), with every other such job submitted meanwhile: its cycle can place none of
them, only give them their pending reason, queue position and demand. A stream of them woke a cycle
per submission, each over the whole growing queue (at the submit bench's 2,000 jobs, cycles of 40-75
ms back to back, a quarter of the control plane's time)."""


def wakes_now(pool: str | None, served: frozenset[str] | None) -> bool:
    """Whether a new job in ``pool`` should wake the scheduler at once: unless a fresh read of the
    workers (``served``; None: none at hand) shows that none serves its pool, a cycle might place it.
    A job with no pool may go to any worker."""
    return pool is None or served is None or pool in served


class ServedPools:
    """The pools that live workers serve, as of a read at most ``ttl_s`` old; a stale read starts a
    new one off the loop and counts as none at hand meanwhile (``current`` None: wake at once)."""

    def __init__(
        self,
        read: Callable[[], frozenset[str]] | None,
        ttl_s: float = SERVED_POOLS_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._ttl = ttl_s
        self._clock = clock
        self._pools: frozenset[str] | None = None
        self._at = 0.0
        self._reading: asyncio.Task[None] | None = None

    def current(self) -> frozenset[str] | None:
        """The served pools when a fresh read has them; else None (and a read begins)."""
        if self._pools is not None and self._clock() - self._at < self._ttl:
            return self._pools
        if self._read is not None and (self._reading is None or self._reading.done()):
            self._reading = asyncio.get_running_loop().create_task(self._refresh())
        return None

    async def _refresh(self) -> None:
        assert self._read is not None
        started = self._clock()
        try:
            pools = await off_loop(self._read)
        except Exception as e:  # the next stale look tries again; until then every job wakes at once
            log.debug("reading the served pools failed: %s", e)
            return
        # As of when the read began: a worker registered during it may be missing.
        self._pools, self._at = pools, started


class RateLimited(Exception):
    """Over the user's submission rate (answered 429 with Retry-After)."""

    def __init__(self, retry_after: float) -> None:
        if retry_after == float("inf"):
            super().__init__("this user's tier allows no submissions")
            retry_after = 86400.0
        else:
            super().__init__(f"submission rate limit reached; retry in {retry_after:.1f}s")
        self.retry_after = retry_after


class SpecRejected(Exception):
    """A valid spec this caller cannot run as it stands: field-level details (answered 422)."""

    def __init__(self, details: list[dict[str, str]]) -> None:
        super().__init__("the job spec is not valid")
        self.details = details


class BadCursor(ValueError):
    """A list cursor this API did not give out (answered 422 naming ``cursor``)."""


class StatusReads:
    """The status-cache reads of one event-loop tick, made together in one ``get_statuses`` call.

    The cache's client is synchronous (a thread hop costs more than the local round trip), so each
    read holds the loop for a round trip to Redis; under a polling load many reads begin in the same
    tick, and one MGET for all of them costs little more than one for a single job."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self._waiting: list[tuple[str, asyncio.Future[tuple[dict[str, Any] | None, StatusTicket]]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def get(self, job_id: str) -> tuple[dict[str, Any] | None, StatusTicket]:
        """``Cache.get_status``, answered once every read begun in this tick has joined."""
        loop = asyncio.get_running_loop()
        if not self._waiting:
            self._loop = loop
            loop.call_soon(self._read)
        elif loop is not self._loop:  # a caller on another loop (tests) reads on its own
            return self.cache.get_status(job_id)
        fut: asyncio.Future[tuple[dict[str, Any] | None, StatusTicket]] = loop.create_future()
        self._waiting.append((job_id, fut))
        return await fut

    def _read(self) -> None:
        batch, self._waiting = self._waiting, []
        try:
            got = self.cache.get_statuses([job_id for job_id, _ in batch])
        except Exception as e:  # each reader raises it, as get_status would have
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        for (_, fut), result in zip(batch, got, strict=True):
            if not fut.done():  # a reader cancelled meanwhile
                fut.set_result(result)


class JobService:
    """The job operations of the REST API (blocking store work runs off the event loop)."""

    def __init__(
        self,
        store: JobsStore,
        *,
        writes: GroupCommit,
        cache: Cache,
        status_cache: bool,
        bus: EventBus,
        boards: QueueBoards,
        dispatcher: Dispatcher,
        tenancy: TenancyService,
        files: FileService,
        metrics: Metrics,
        settings: Settings,
        tiers: dict[str, Tier],
        kick_scheduler: Kick,
        kick_relay: Kick,
    ) -> None:
        self.store = store
        self.writes = writes
        self.cache = cache
        # The status cache pays off where reads would cross the network to PostgreSQL from many
        # replicas; on the embedded defaults a SQLite read is as cheap as the cache's bookkeeping.
        self.status_cache = status_cache
        self.status_reads = StatusReads(cache)
        self.bus = bus
        self.boards = boards
        self.dispatcher = dispatcher
        self.tenancy = tenancy
        self.files = files
        self.metrics = metrics
        self.settings = settings
        self.tiers = tiers
        self.kick_scheduler = kick_scheduler
        self.kick_relay = kick_relay
        self.served_pools = ServedPools(store.worker_pools)
        # The loop a late kick waits on, and its handle (a loop that has ended never runs it).
        self._late_kick: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None
        self.archive: RetentionService | None = None
        """Where jobs that retention archived are read from (set by the composition root)."""

    # ---- reading -------------------------------------------------------------------------------
    @staticmethod
    def can_see(user: User, job: Job) -> bool:
        """Admins see every job; others their team's."""
        return user.is_admin or job.team == user.team

    async def visible_job(self, user: User, job_id: str) -> Job:
        """The job, or ``NotFound`` when it does not exist or the caller may not see it."""
        job = await off_loop(self.store.get_job, job_id)
        if job is None and self.archive is not None:
            job = await self._archived(user, job_id)
        if job is None or not self.can_see(user, job):
            raise NotFound(job_id)
        return job

    async def _archived(self, user: User, job_id: str) -> Job | None:
        """A job retention archived, read from its archive object; the index's team decides
        visibility first, so another team's archived ids cannot be probed either."""
        assert self.archive is not None
        ref = await off_loop(self.archive.archived_ref, job_id)
        if ref is None or not (user.is_admin or ref.team == user.team):
            return None
        return await off_loop(self.archive.archived_job, ref)

    async def current(self, job_id: str) -> Job | None:
        """The job as stored now, whoever may see it (for streams that already checked)."""
        return await off_loop(self.store.get_job, job_id)

    async def job_view(self, user: User, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}: from the status cache when it holds the job, else from the store (and
        cached for the next reader). The cache is invalidated after every commit that changes a job."""
        if not self.status_cache:
            return await self.with_queue_info(job_json(await self.visible_job(user, job_id)))
        cached, ticket = await self.status_reads.get(job_id)
        if cached is not None and (user.is_admin or cached.get("team") == user.team):
            return await self.with_queue_info(cached)
        job = await self.visible_job(user, job_id)
        view = job_json(job)
        if not job.is_array:  # an array's counts change with its tasks' events, not its own
            self.cache.fill_status(job_id, view, ticket, STATUS_TTL_S)
        return await self.with_queue_info(view)

    async def with_queue_info(self, view: dict[str, Any]) -> dict[str, Any]:
        """A pending job's view with its queue position and estimated start, from the leader's board
        (never cached with the view: the board moves every cycle)."""
        if view["status"] != JobStatus.PENDING.value:
            return view
        info = (await self.boards.current()).lookup(view["id"])
        return {
            **view,
            "queue_position": info["queue_position"],
            "estimated_start_at": iso(info["estimated_start_at"]),
        }

    async def list_jobs(
        self,
        user: User,
        *,
        statuses: Sequence[str],
        owner: str | None,
        team: str | None,
        name: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The views of the jobs the caller may see, newest first, and the next page's cursor
        (BadCursor: the cursor is not one this API gave out)."""
        flt = JobFilter(
            status=statuses,
            user=owner,
            team=team,
            name=name,
            visible_team=None if user.is_admin else user.team,
        )
        try:
            jobs, next_cursor = await off_loop(self.store.list_jobs, flt, limit, cursor)
        except ValueError as e:
            raise BadCursor(str(e)) from None
        return [await self.with_queue_info(job_json(j)) for j in jobs], next_cursor

    async def tasks(
        self, array: Job, limit: int, cursor: str | None, statuses: Sequence[str]
    ) -> tuple[list[Job], str | None]:
        """A page of an array's tasks by index, and the next page's cursor (BadCursor: not one this
        API gave out)."""
        try:
            return await off_loop(self.store.array_tasks, array.id, limit, cursor, statuses)
        except ValueError as e:
            raise BadCursor(str(e)) from None

    # ---- events ----------------------------------------------------------------------------------
    async def events(self, job_id: str, after: int = 0) -> list[Event]:
        """A job's events after the event id ``after``, oldest first (an archived job's from its
        archive: a live job always has its ``submitted`` event, so only an empty answer looks)."""
        events = await off_loop(self.store.job_events, job_id, after)
        if not events and self.archive is not None:
            events = await off_loop(self.archive.archived_events, job_id, after)
        return events

    async def events_since(self, after: int, team: str | None) -> list[Event]:
        """Every job's events after ``after`` (of one team if given), oldest first."""
        return await off_loop(self.store.events_since, after, team)

    async def last_event_id(self) -> int:
        """The newest event's id (where a live stream with no ``after`` starts)."""
        return await off_loop(self.store.last_event_id)

    def subscribe_events(self) -> Any:
        """A bus subscription to job events: a hint to read them again (close it when done)."""
        return self.bus.subscribe(JOB_TOPICS)

    # ---- submit ----------------------------------------------------------------------------------
    async def check_submittable(self, user: User, spec: JobSpec) -> None:
        """PermissionError or SpecRejected when ``user`` may not run ``spec`` as it stands: a viewer,
        another team's job, an unknown team, a workdir bundle of another team, a missing secret."""
        if not user.can_submit:
            raise PermissionError("viewers cannot submit jobs")
        if spec.team and spec.team != user.team:
            if not user.is_admin:
                raise PermissionError(f"you may submit only to your team {user.team!r}")
            if not await self.tenancy.team_exists(spec.team):
                raise SpecRejected([{"field": "team", "message": f"team {spec.team!r} does not exist"}])
        team = spec.team or user.team
        if spec.workdir is not None and not self.files.bundle_exists(team, spec.workdir):
            raise SpecRejected([{"field": "workdir", "message": "no such uploaded workdir for your team"}])
        if spec.secrets:
            known = {s.name for s in await self.tenancy.list_secrets(team)}
            missing = [n for n in spec.secrets if n not in known]
            if missing:
                raise SpecRejected(
                    [{"field": "secrets", "message": f"team {team!r} has no secret {n!r}"} for n in missing]
                )
        await self._check_dependencies(user, spec)

    async def _check_dependencies(self, user: User, spec: JobSpec) -> None:
        """SpecRejected naming each dependency that is no job the caller may see: a job of another
        team reads as one that does not exist, as everywhere."""
        bad = []
        for i, dep in enumerate(spec.depends_on):
            job = await off_loop(self.store.get_job, dep.job)
            if job is None or not self.can_see(user, job):
                bad.append({"field": f"depends_on.{i}.job", "message": f"no job {dep.job} that you may see"})
        if bad:
            raise SpecRejected(bad)

    def check_rate(self, user: User) -> None:
        """RateLimited when the user is over their tier's (or the global) submission rate."""
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
        """Accept a job (rate-limited); an Idempotency-Key replay returns the job that key made."""
        self.check_rate(user)
        store = self.store
        try:
            job = await self.writes.run(lambda conn: store.insert_job_in(conn, user, spec, idempotency_key))
            result = SubmitResult(job=job, created=True)
        except sa.exc.IntegrityError:
            if idempotency_key is None:
                raise
            result = await off_loop(store.replay, user, spec, idempotency_key)
        if result.created:
            self.metrics.submitted.inc()
            self._wake_scheduler(spec.pool)
            self.kick_relay.set()
        return result

    def _wake_scheduler(self, pool: str | None) -> None:
        """Kick the scheduler for a new job: at once, or ``UNSERVED_KICK_DELAY_S`` later, together
        with the others submitted meanwhile, for a job in a pool no live worker serves."""
        if pool is None or wakes_now(pool, self.served_pools.current()):
            self.kick_scheduler.set()
            return
        loop = asyncio.get_running_loop()
        if self._late_kick is None or self._late_kick[0] is not loop:
            self._late_kick = (loop, loop.call_later(UNSERVED_KICK_DELAY_S, self._kick_late))

    def _kick_late(self) -> None:
        self._late_kick = None
        self.kick_scheduler.set()

    # ---- cancel and restart ----------------------------------------------------------------------
    async def cancel(self, user: User, job_id: str) -> Job:
        """Cancel (idempotent): a pending job ends at once, a running one is CANCELLING until its
        worker confirms; a finished job stays as it was."""
        archived = await self.visible_job(user, job_id)
        if not user.can_submit:
            raise PermissionError("viewers cannot cancel jobs")
        if archived.archived:
            return archived  # it finished long ago: a cancel leaves a finished job as it was
        job = await off_loop(self.store.cancel, job_id, user.name)
        await self.dispatcher.cancel(job, f"cancelled by {user.name}")
        if job.gang_id is not None:
            await self.dispatcher.push_gang_stops(job.id)
        if job.is_array:  # its leased tasks stop on their workers
            for task in await off_loop(self.store.stopping_tasks, job.id):
                await self.dispatcher.cancel(task, f"cancelled by {user.name}")
        self.kick_relay.set()
        return job

    async def restart(self, user: User, job_id: str) -> Job:
        """Run a finished job again as a new attempt (its owner, a team admin or an admin)."""
        job = await self.visible_job(user, job_id)
        if not user.manages(job.team) and (job.user != user.name or not user.can_submit):
            raise PermissionError("only the job's owner, a team admin or an admin can restart it")
        if job.archived:
            raise Conflict(f"job {job_id} is archived (retention); submit its spec again instead")
        job = await off_loop(self.store.restart, job_id, user.name)
        self.kick_scheduler.set()
        self.kick_relay.set()
        return job
