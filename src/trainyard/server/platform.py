"""The composition root: builds every backend and service of one control plane from ``Settings``.

Nothing else in the control plane constructs a backend. The services (``trainyard.server.services``)
get their collaborators here and are public attributes, which is how the REST routes (through
FastAPI dependencies), the worker gRPC service and the leader's loops (``run.py``) reach them."""

from __future__ import annotations

from trainyard.bus.base import EventBus
from trainyard.bus.memory import MemoryBus
from trainyard.cache.base import Cache, LogTailStore
from trainyard.cache.memory import MemoryCache
from trainyard.cache.sql import SqlCache
from trainyard.cache.tiers import parse_tiers, tier_of
from trainyard.objects.factory import open_object_store
from trainyard.scheduler.snapshot import SchedulerConfig
from trainyard.server.beats import BeatBuffer
from trainyard.server.group_commit import GroupCommit
from trainyard.server.hub import Kick, WorkerChannels
from trainyard.server.leader import leadership_for
from trainyard.server.logtail import LogTails
from trainyard.server.metrics import Metrics
from trainyard.server.notify import notifier_for
from trainyard.server.secretbox import SecretBox
from trainyard.server.services.attempts import AttemptService
from trainyard.server.services.auth import AuthService
from trainyard.server.services.board import QueueBoards
from trainyard.server.services.demand import PoolDemands
from trainyard.server.services.dispatch import Dispatcher
from trainyard.server.services.files import FileService
from trainyard.server.services.fleet import FleetService
from trainyard.server.services.fluentbit import FluentBitIngest
from trainyard.server.services.health import Health
from trainyard.server.services.jobs import JobService
from trainyard.server.services.logs import LogService
from trainyard.server.services.logsearch import LogIndexer, LogSearch
from trainyard.server.services.outbox import EventRelay
from trainyard.server.services.reconcile import Reconciler
from trainyard.server.services.replica import Replica
from trainyard.server.services.retention import RetentionService
from trainyard.server.services.scheduling import SchedulerLoop
from trainyard.server.services.tenancy import TenancyService
from trainyard.server.services.usage import BudgetWatch, UsageService
from trainyard.server.settings import Settings, secret_key, url_secret
from trainyard.store.sql import SqlStore


def _cache_and_tails(settings: Settings, store: SqlStore) -> tuple[Cache, LogTailStore]:
    """Redis when configured, falling back to the database (and to this replica's memory for the
    live log tail) while it is down; in-process twins on the embedded defaults."""
    ttl = 3 * settings.heartbeat_interval
    memory_tails = LogTails(settings.log_tail_bytes)
    if not settings.redis_url:
        return MemoryCache(), memory_tails
    # The Redis client (and Kafka's, psycopg, boto3, alembic) is imported only where it is
    # configured: the embedded defaults' idle footprint is the aim (README, Idle footprint).
    from trainyard.cache.redis import RedisCache, RedisConfig
    from trainyard.cache.redis_tail import RedisLogTails
    from trainyard.cache.resilient import ResilientCache, ResilientLogTails

    cfg = RedisConfig(settings.redis_url)
    cache = ResilientCache(RedisCache(cfg), SqlCache(store, heartbeat_ttl_s=ttl), heartbeat_ttl_s=ttl)
    tails = ResilientLogTails(RedisLogTails(cfg, cap=settings.log_tail_bytes), memory_tails)
    return cache, tails


class Platform:
    """One control plane: its backends (store, object storage, cache, bus), its in-process signals,
    and its services, built from ``settings`` (``store``: an already built store, for tests)."""

    def __init__(self, settings: Settings, *, store: SqlStore | None = None) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self._backends(settings, store)
        self.channels = WorkerChannels()
        self.kick_scheduler = Kick()
        self.kick_relay = Kick()
        self.metrics = Metrics()
        self.writes = GroupCommit(self.store)
        # Sealed log chunks: a lane of their own, so that a burst of seals never queues reports.
        self.seal_writes = GroupCommit(self.store)
        # Submissions only insert new rows: on PostgreSQL several of their batches may be in flight.
        self.submit_writes = GroupCommit(self.store, writers=settings.submit_writer_count)
        self.leadership = leadership_for(settings.db_url, settings.home)
        self.notifier = notifier_for(settings.db_url)
        self._services(settings)
        self.metrics.add_queue_collector(self.fleet.queue_gauges)
        self.metrics.add_demand_collector(self.demand.gauges)

    def _backends(self, settings: Settings, store: SqlStore | None) -> None:
        self.store = store or SqlStore(
            settings.db_url, pool_size=settings.db_pool_connections, max_overflow=settings.db_pool_overflow
        )
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
        self.bus: EventBus = MemoryBus()
        if settings.kafka_bootstrap:
            from trainyard.bus.kafka import KafkaBus, KafkaBusConfig

            self.bus = KafkaBus(KafkaBusConfig(settings.kafka_bootstrap))

    def _services(self, s: Settings) -> None:
        store, hb = self.store, s.heartbeat_interval
        kicks = {"kick_scheduler": self.kick_scheduler, "kick_relay": self.kick_relay}
        self.replica = Replica(self.cache, heartbeat_interval=hb, restart_grace=s.restart_grace)
        self.boards = QueueBoards(store, self.replica)
        self.demand = PoolDemands(store, self.replica)
        self.auth = AuthService(store, s)
        self.tenancy = TenancyService(store, SecretBox(secret_key(s)), self.tiers, self.kick_scheduler)
        self.dispatcher = Dispatcher(
            store,
            self.channels,
            self.notifier,
            self.objects,
            self.tenancy,
            url_ttl=s.url_ttl,
            kick_relay=self.kick_relay,
        )
        self.files = FileService(
            store,
            self.objects,
            url_ttl=s.url_ttl,
            unpacked_limit=s.workdir_unpacked_limit,
            file_limit=s.workdir_file_limit,
        )
        self.logs = LogService(store, self.objects, self.tails, self.dispatcher)
        self.log_search = LogSearch(store)
        self.log_indexer = LogIndexer(store, self.objects, self.metrics)
        self.retention = RetentionService(
            store, self.objects, retention_s=s.retention, batch=s.retention_batch
        )
        self.jobs = JobService(
            store,
            writes=self.submit_writes,
            cache=self.cache,
            status_cache=self.status_cache,
            bus=self.bus,
            boards=self.boards,
            dispatcher=self.dispatcher,
            tenancy=self.tenancy,
            files=self.files,
            metrics=self.metrics,
            settings=s,
            tiers=self.tiers,
            **kicks,
        )
        self.jobs.archive = self.retention
        self.logs.archived_chunks = self.retention.archived_chunks
        self.files.archived_artifacts = self.retention.archived_artifacts
        self.attempts = AttemptService(
            store, self.writes, self.logs, self.dispatcher, seal_writes=self.seal_writes, **kicks
        )
        self.fluent_bit = (
            FluentBitIngest(
                store,
                self.objects,
                self.tenancy,
                prefix=s.fluent_bit_prefix,
                namespace=s.fluent_bit_namespace,
            )
            if s.fluent_bit_prefix
            else None
        )
        self._worker_services(s)
        self.budgets = BudgetWatch(store, self.metrics, background=True)
        self.usage = UsageService(store, self.budgets, self.kick_scheduler)
        self.scheduler = SchedulerLoop(
            store,
            self.replica,
            self.boards,
            self.metrics,
            config=SchedulerConfig(half_life_s=s.fair_share_half_life),
            # A victim that has not stopped within the grace (plus slack) may be chosen and told again.
            stop_grace_s=s.cancel_grace + 3 * hb + 10,
            demand=self.demand,
            budgets=self.budgets,
        )
        self.relay = EventRelay(store, self.bus, self.metrics)
        self.health = Health(store, self.replica, self.metrics)

    def _worker_services(self, s: Settings) -> None:
        """What serves the agents' side: liveness (the reconciler) and heartbeats (the fleet)."""
        store, hb = self.store, s.heartbeat_interval
        self.reconciler = Reconciler(
            store,
            self.cache,
            self.replica,
            self.auth,
            self.metrics,
            heartbeat_interval=hb,
            cancel_grace=s.cancel_grace,
            restart_grace=s.restart_grace,
        )
        self.fleet = FleetService(
            store,
            self.cache,
            self.replica,
            self.auth,
            self.reconciler,
            self.dispatcher,
            self.metrics,
            heartbeat_interval=hb,
            kick_scheduler=self.kick_scheduler,
        )
        if s.redis_url:
            # A shared cache is a round trip away: beats go in batches, off the event loop.
            self.fleet.beats = self.reconciler.beats = BeatBuffer(self.cache, 3 * hb)

    def close(self) -> None:
        """Release what the control plane holds: the bus, the leadership, the store's connections."""
        self.notifier.stop()
        self.bus.close()
        self.leadership.release()
        self.store.close()
