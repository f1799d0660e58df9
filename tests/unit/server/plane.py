"""The services of one control plane, built by hand the way the composition root builds them, over
a SQLite store in a temp dir, an in-process cache and a fake clock; plus the few steps a test needs
(a worker that registers and beats, a job that is submitted, leased and started)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainyard.bus.memory import MemoryBus
from trainyard.cache.memory import MemoryCache
from trainyard.cache.tiers import parse_tiers
from trainyard.model.records import Job, User, Worker
from trainyard.model.spec import JobSpec
from trainyard.model.states import AttemptOutcome, JobStatus
from trainyard.objects.factory import open_object_store
from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.scheduler.snapshot import SchedulerConfig
from trainyard.server.group_commit import GroupCommit
from trainyard.server.hub import Kick, WorkerChannels
from trainyard.server.logtail import LogTails
from trainyard.server.metrics import Metrics
from trainyard.server.notify import WorkerNote
from trainyard.server.secretbox import SecretBox
from trainyard.server.services.attempts import AttemptService
from trainyard.server.services.auth import AuthService
from trainyard.server.services.board import QueueBoards
from trainyard.server.services.dispatch import Dispatcher, command_message
from trainyard.server.services.files import FileService
from trainyard.server.services.fleet import Beat, FleetService
from trainyard.server.services.jobs import JobService
from trainyard.server.services.logs import LogService
from trainyard.server.services.reconcile import Reconciler
from trainyard.server.services.replica import Replica
from trainyard.server.services.scheduling import SchedulerLoop
from trainyard.server.services.tenancy import TenancyService
from trainyard.server.settings import Settings
from trainyard.store.sql import FinishReport, Lease, SqlStore

HEARTBEAT_S = 1.0
CANCEL_GRACE_S = 2.0
RESTART_GRACE_S = 10.0
ALICE = User("alice", "vision", "user")
VIEWER = User("vic", "vision", "viewer")
BOB = User("bob", "nlp", "user")


class FakeClock:
    """Unix time that moves only when told to."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RecordingNotifier:
    """Notes for other replicas, kept for the test to read."""

    sent: list[WorkerNote] = field(default_factory=list)

    def send(self, notes: Sequence[WorkerNote]) -> None:
        self.sent.extend(notes)

    def start(self, loop: asyncio.AbstractEventLoop, deliver: Any) -> None:
        return None

    def stop(self) -> None:
        return None


@dataclass
class Plane:
    clock: FakeClock
    store: SqlStore
    cache: MemoryCache
    channels: WorkerChannels
    notifier: RecordingNotifier
    replica: Replica
    auth: AuthService
    tenancy: TenancyService
    dispatcher: Dispatcher
    jobs: JobService
    attempts: AttemptService
    reconciler: Reconciler
    fleet: FleetService
    scheduler: SchedulerLoop
    writes: GroupCommit
    credentials: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        self.writes.close()
        self.store.close()

    # ---- steps ---------------------------------------------------------------------------------
    async def worker(self, name: str = "w1", cpu: float = 4, **labels: str) -> Worker:
        """A worker registers (its first heartbeat comes with it)."""
        worker, credential = await self.fleet.register(
            cached_uris=None,
            name=name,
            hostname=name,
            pool="default",
            region=None,
            cpu=cpu,
            memory=16 << 30,
            gpu=0,
            gpu_type=None,
            labels=dict(labels),
            version="test",
        )
        self.credentials[worker.id] = credential
        return worker

    async def beat(
        self, worker: Worker, *, draining: bool = False, running: list[tuple[str, int, str]] | None = None
    ) -> list[pb.Command]:
        """A heartbeat listing ``running`` (default: every attempt leased to the worker); the
        commands it gets back."""
        current = await self.auth.worker(self.credentials[worker.id])
        assert current is not None
        if running is None:
            running = [
                (a.job_id, a.attempt, a.lease_token or "") for a in self.store.live_attempts(worker.id)
            ]
        cmds = await self.fleet.heartbeat(current, Beat(running=running, draining=draining))
        return [command_message(c) for c in cmds]

    async def submit(self, user: User = ALICE, **spec: Any) -> Job:
        body = {"command": ["python", "train.py"], "resources": {"cpu": 4, "memory": "1Gi"}, **spec}
        return (await self.jobs.submit(user, JobSpec.model_validate(body), None)).job

    def schedule(self) -> list[Lease]:
        """One scheduler cycle; its leases are sent to the workers' streams."""
        leases = self.scheduler.schedule_once()
        self.dispatcher.dispatch(leases)
        return leases

    async def start(self, lease: Lease) -> None:
        res = await self.attempts.started(lease.job_id, lease.attempt, lease.lease_token, lease.worker_id)
        assert res.ok, res.message

    async def finish(
        self, lease: Lease, outcome: AttemptOutcome, exit_code: int | None = 0
    ) -> JobStatus | None:
        res = await self.attempts.finished(
            FinishReport(lease.job_id, lease.attempt, lease.lease_token, lease.worker_id, outcome, exit_code)
        )
        assert res.ok, res.message
        return res.status

    def job(self, job_id: str) -> Job:
        job = self.store.get_job(job_id)
        assert job is not None
        return job


def drained(queue: asyncio.Queue[pb.LeaseMessage]) -> list[pb.LeaseMessage]:
    """Everything waiting on a worker's stream."""
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def build(tmp_path: Path, clock: FakeClock) -> Plane:
    """The services, wired as ``trainyard.server.platform.Platform`` wires them."""
    settings = Settings(home=tmp_path / "home", heartbeat_interval=HEARTBEAT_S, cancel_grace=CANCEL_GRACE_S)
    settings.home.mkdir(parents=True)
    store = SqlStore(f"sqlite:///{tmp_path / 'state.db'}", clock=clock)
    store.migrate()
    cache = MemoryCache(clock)
    metrics = Metrics()
    channels = WorkerChannels()
    notifier = RecordingNotifier()
    kick_scheduler, kick_relay = Kick(), Kick()
    objects = open_object_store(None, home=tmp_path, secret=b"s" * 32, public_url="http://127.0.0.1:1")
    writes = GroupCommit(store)
    replica = Replica(cache, heartbeat_interval=HEARTBEAT_S, restart_grace=RESTART_GRACE_S, clock=clock)
    replica.lead()
    boards = QueueBoards(store, replica)
    auth = AuthService(store, settings, clock=clock)
    tenancy = TenancyService(store, SecretBox(b"k" * 32), {}, kick_scheduler)
    dispatcher = Dispatcher(store, channels, notifier, objects, tenancy, url_ttl=600, kick_relay=kick_relay)
    files = FileService(store, objects, url_ttl=600, unpacked_limit=1 << 30, file_limit=1000)
    logs = LogService(store, objects, LogTails())
    jobs = JobService(
        store,
        writes=writes,
        cache=cache,
        status_cache=False,
        bus=MemoryBus(),
        boards=boards,
        dispatcher=dispatcher,
        tenancy=tenancy,
        files=files,
        metrics=metrics,
        settings=settings,
        tiers=parse_tiers(settings.rate_tiers),
        kick_scheduler=kick_scheduler,
        kick_relay=kick_relay,
    )
    attempts = AttemptService(
        store, writes, logs, dispatcher, kick_scheduler=kick_scheduler, kick_relay=kick_relay
    )
    reconciler = Reconciler(
        store,
        cache,
        replica,
        auth,
        metrics,
        heartbeat_interval=HEARTBEAT_S,
        cancel_grace=CANCEL_GRACE_S,
        restart_grace=RESTART_GRACE_S,
        clock=clock,
    )
    fleet = FleetService(
        store,
        cache,
        replica,
        auth,
        reconciler,
        dispatcher,
        metrics,
        heartbeat_interval=HEARTBEAT_S,
        kick_scheduler=kick_scheduler,
        clock=clock,
    )
    scheduler = SchedulerLoop(
        store,
        replica,
        boards,
        metrics,
        config=SchedulerConfig(),
        stop_grace_s=CANCEL_GRACE_S + 3 * HEARTBEAT_S + 10,
        clock=clock,
    )
    return Plane(
        clock,
        store,
        cache,
        channels,
        notifier,
        replica,
        auth,
        tenancy,
        dispatcher,
        jobs,
        attempts,
        reconciler,
        fleet,
        scheduler,
        writes,
    )
