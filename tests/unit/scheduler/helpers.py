"""Short constructors so each table row reads as the situation it describes."""

from __future__ import annotations

from trainyard.scheduler.core import Decisions, decide
from trainyard.scheduler.snapshot import (
    GIB,
    PendingJob,
    Quota,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    Team,
    Worker,
)

NOW = 100_000.0


def node(
    id_: str,
    *,
    cpu: float = 32,
    mem: int = 256 * GIB,
    gpu: int = 0,
    gpu_type: str | None = None,
    pool: str = "default",
    region: str | None = None,
    spot: bool = False,
    cached: frozenset[str] = frozenset(),
) -> Worker:
    return Worker(id_, cpu, mem, gpu, gpu_type, pool, region, spot, cached_uris=cached)


def gpu_node(id_: str, gpu: int = 8, **kw: object) -> Worker:
    return node(id_, gpu=gpu, gpu_type="a100", **kw)  # type: ignore[arg-type]


def job(
    id_: str,
    team: str = "vision",
    *,
    prio: int = 1,
    age: float = 0.0,
    cpu: float = 1,
    mem: int = GIB,
    gpu: int = 0,
    gpu_type: str | None = None,
    pool: str | None = None,
    region: str | None = None,
    require_region: bool = False,
    uris: tuple[str, ...] = (),
    preemptible: bool = False,
    replicas: int = 1,
    runtime: float = 3600.0,
) -> PendingJob:
    return PendingJob(
        id_,
        team,
        priority=prio,
        queued_at=NOW - age,
        cpu=cpu,
        memory=mem,
        gpu=gpu,
        gpu_type=gpu_type,
        pool=pool,
        region=region,
        require_region=require_region,
        data_uris=uris,
        preemptible=preemptible,
        replicas=replicas,
        max_runtime_s=runtime,
    )


def run(
    id_: str,
    worker: str,
    team: str = "vision",
    *,
    prio: int = 1,
    cpu: float = 1,
    mem: int = GIB,
    gpus: tuple[int, ...] = (),
    preemptible: bool = False,
    started_ago: float = 600.0,
    checkpoint_ago: float | None = None,
    runtime: float = 3600.0,
    replica: int = 0,
    terminating: bool = False,
) -> RunningJob:
    return RunningJob(
        id_,
        team,
        worker,
        priority=prio,
        cpu=cpu,
        memory=mem,
        gpu=len(gpus),
        gpu_indices=gpus,
        preemptible=preemptible,
        started_at=NOW - started_ago,
        last_checkpoint_at=None if checkpoint_ago is None else NOW - checkpoint_ago,
        max_runtime_s=runtime,
        replica=replica,
        terminating=terminating,
    )


def team(name: str, weight: float = 1.0, **quota: object) -> Team:
    return Team(name, weight, Quota(**quota) if quota else None)  # type: ignore[arg-type]


def snap(
    workers: list[Worker],
    pending: list[PendingJob],
    running: list[RunningJob] | None = None,
    teams: list[Team] | None = None,
    config: SchedulerConfig | None = None,
) -> Snapshot:
    return Snapshot(
        NOW,
        tuple(workers),
        tuple(pending),
        tuple(running or ()),
        tuple(teams or ()),
        config or SchedulerConfig(),
    )


def where(d: Decisions) -> dict[str, str]:
    """job id -> worker id for single-replica placements."""
    return {p.job_id: p.worker_id for p in d.placements}


def decide_on(*args: object, **kw: object) -> Decisions:
    return decide(snap(*args, **kw))  # type: ignore[arg-type]
