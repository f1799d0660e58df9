"""Synthetic snapshots at a chosen scale, shared by the tests and the benchmark (bench/scheduler.py)."""

from __future__ import annotations

import random

from trainyard.scheduler.snapshot import (
    GIB,
    PendingJob,
    Quota,
    ResourceVector,
    RunningJob,
    Snapshot,
    Team,
    Worker,
)

TEAMS = ("vision", "nlp", "speech", "research", "infra")
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
DATASETS = tuple(f"s3://datasets/d{i}" for i in range(40))
RUNTIMES = (300.0, 1800.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 24 * 3600.0)


def fleet(n_workers: int, rng: random.Random) -> list[Worker]:
    """Half CPU nodes, half 8-GPU nodes (a100/h100), a quarter of each on spot, three regions."""
    out: list[Worker] = []
    for i in range(n_workers):
        region = REGIONS[i % len(REGIONS)]
        spot = i % 4 == 3
        cached = frozenset(rng.sample(DATASETS, 3))
        if i % 2 == 0:
            out.append(
                Worker(
                    f"cpu-{i:05d}", 32, 128 * GIB, pool="cpu", region=region, spot=spot, cached_uris=cached
                )
            )
        else:
            gtype = "a100" if i % 3 else "h100"
            out.append(
                Worker(
                    f"gpu-{i:05d}",
                    96,
                    1024 * GIB,
                    8,
                    gtype,
                    pool="gpu",
                    region=region,
                    spot=spot,
                    cached_uris=cached,
                )
            )
    return out


def snapshot(n_pending: int, n_workers: int, *, seed: int = 7, load: float = 0.6) -> Snapshot:
    """A busy fleet: ``load`` of each worker already running jobs, ``n_pending`` jobs waiting."""
    rng = random.Random(seed)
    now = 1_000_000.0
    workers = fleet(n_workers, rng)
    running: list[RunningJob] = []
    for w in workers:
        used_gpu = 0
        used_cpu = 0.0
        k = 0
        while True:
            gpu = rng.choice((1, 2, 4)) if w.gpu else 0
            cpu = float(rng.choice((2, 4, 8)))
            if used_gpu + gpu > w.gpu * load or used_cpu + cpu > w.cpu * load:
                break
            started = now - rng.uniform(0, 20_000)
            running.append(
                RunningJob(
                    f"run-{w.id}-{k}",
                    rng.choice(TEAMS),
                    w.id,
                    priority=rng.randrange(4),
                    cpu=cpu,
                    memory=8 * GIB,
                    gpu=gpu,
                    gpu_indices=tuple(range(used_gpu, used_gpu + gpu)),
                    preemptible=w.spot or rng.random() < 0.5,
                    started_at=started,
                    last_checkpoint_at=started + rng.uniform(0, now - started),
                    max_runtime_s=rng.choice(RUNTIMES) + (now - started),
                )
            )
            used_gpu += gpu
            used_cpu += cpu
            k += 1
    pending: list[PendingJob] = []
    for i in range(n_pending):
        gpu_job = rng.random() < 0.6
        gpu = rng.choice((1, 1, 1, 2, 4, 8)) if gpu_job else 0
        replicas = rng.choice((2, 4)) if gpu == 8 and rng.random() < 0.3 else 1
        pending.append(
            PendingJob(
                f"job-{i:06d}",
                rng.choice(TEAMS),
                user=f"u{rng.randrange(50)}",
                priority=rng.choices((0, 1, 2, 3), (2, 6, 2, 0.2))[0],
                queued_at=now - rng.uniform(0, 7200),
                cpu=float(rng.choice((1, 2, 4, 8))),
                memory=rng.choice((4, 16, 32)) * GIB,
                gpu=gpu,
                gpu_type=rng.choice((None, "a100", "h100")) if gpu else None,
                pool="gpu" if gpu else rng.choice((None, "cpu")),
                region=rng.choice((None, *REGIONS)),
                require_region=rng.random() < 0.1,
                data_uris=tuple(rng.sample(DATASETS, 1)) if rng.random() < 0.5 else (),
                preemptible=rng.random() < 0.5,
                replicas=replicas,
                max_runtime_s=rng.choice(RUNTIMES),
            )
        )
    teams = (
        Team("vision", 2.0, Quota(gpu=n_workers * 2)),
        Team("nlp", 2.0, usage_history=ResourceVector(100, 1000 * GIB, 50)),
        Team("speech", 1.0),
        Team("research", 1.0, Quota(gpu_by_type={"h100": n_workers // 4})),
        Team("infra", 0.5),
    )
    return Snapshot(now, tuple(workers), tuple(pending), tuple(running), teams)
