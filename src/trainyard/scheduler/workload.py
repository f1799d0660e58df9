"""Workloads for the simulator: job arrivals, the fleet they run on, teams and spot reclaims.

A workload comes from a JSONL trace (:func:`parse_trace`) or a seeded generator
(:func:`synthetic`). Everything is pure data, so the simulator and its tests never touch a clock,
a file or a random source of their own.

Trace format, one JSON object per line (blank lines and lines starting with ``#`` are skipped);
``type`` says what the line is and defaults to ``job``::

    {"type": "worker", "id": "g1", "cpu": 96, "memory": "1Ti", "gpu": 8, "gpu_type": "a100",
     "pool": "gpu", "spot": false}
    {"type": "team", "name": "vision", "weight": 2, "gpu_quota": 16}
    {"type": "reclaim", "worker": "g1", "at": 3600, "duration": 1800}
    {"type": "horizon", "s": 86400}
    {"id": "j1", "submit": 0, "team": "vision", "priority": "high", "cpu": 4, "memory": "16Gi",
     "gpu": 1, "gpu_type": "a100", "pool": "gpu", "preemptible": true, "replicas": 1,
     "runtime": "2h", "max_runtime": "4h", "checkpoint": "30m"}

Times are seconds from the start of the trace (or durations such as ``2h``). ``runtime`` is the
work the job needs; ``checkpoint`` is how often it saves progress (absent: never), which decides
how much a preemption costs it.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from trainyard.model.quantity import parse_duration, parse_memory
from trainyard.scheduler.snapshot import DAY_S, GIB, Quota, Team, Worker

PRIORITY_NAMES = ("low", "normal", "high", "urgent")
SyntheticKind = Literal["target", "small"]
CARRY_OVER_AT = -60.0
"""When yesterday's still-running work enters a synthetic day: early enough that the first cycles
(at most one a minute by default) have placed it by t=0."""


class TraceError(ValueError):
    """A trace line that cannot be read; the message names the line."""


@dataclass(frozen=True, slots=True)
class JobArrival:
    """One job of a workload: when it arrives, what it needs, and how long it runs."""

    id: str
    submit_s: float
    """Seconds from the start of the workload; negative for work carried over from before it."""
    team: str
    runtime_s: float
    """The work the job needs to finish, excluding time lost to preemption."""
    priority: int = 1
    cpu: float = 1.0
    memory: int = GIB
    gpu: int = 0
    gpu_type: str | None = None
    pool: str | None = None
    preemptible: bool = False
    replicas: int = 1
    max_runtime_s: float = DAY_S
    checkpoint_s: float | None = None
    """How often the job saves a checkpoint; ``None``: never, so a preemption loses the attempt."""
    kind: str = "train"


@dataclass(frozen=True, slots=True)
class SpotReclaim:
    """The cloud takes a spot worker back at ``at_s`` and returns it ``duration_s`` later."""

    worker_id: str
    at_s: float
    duration_s: float


@dataclass(frozen=True, slots=True)
class Workload:
    """A workload to simulate: jobs arriving over time, the workers, the teams and spot reclaims."""

    name: str
    jobs: tuple[JobArrival, ...]
    workers: tuple[Worker, ...]
    teams: tuple[Team, ...] = ()
    reclaims: tuple[SpotReclaim, ...] = ()
    horizon_s: float | None = None
    """Simulated time at which the run stops; ``None``: when every job that can finish has."""


# --- trace ---------------------------------------------------------------------------------------


def parse_trace(lines: Iterable[str], name: str = "trace") -> Workload:
    """A workload from JSONL text; :class:`TraceError` names the first bad line and why."""
    jobs: list[JobArrival] = []
    workers: list[Worker] = []
    teams: list[Team] = []
    reclaims: list[SpotReclaim] = []
    horizon: float | None = None
    seen_jobs: set[str] = set()
    seen_workers: set[str] = set()
    for lineno, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise TraceError(f"{name} line {lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise TraceError(f"{name} line {lineno}: expected a JSON object, got {type(obj).__name__}")
        try:
            kind = obj.get("type", "job")
            if kind == "job":
                job = _job(obj)
                if job.id in seen_jobs:
                    raise ValueError(f"duplicate job id {job.id!r}")
                seen_jobs.add(job.id)
                jobs.append(job)
            elif kind == "worker":
                w = _worker(obj)
                if w.id in seen_workers:
                    raise ValueError(f"duplicate worker id {w.id!r}")
                seen_workers.add(w.id)
                workers.append(w)
            elif kind == "team":
                teams.append(_team(obj))
            elif kind == "reclaim":
                reclaims.append(
                    SpotReclaim(
                        _str(obj, "worker"),
                        _duration(obj, "at"),
                        _duration(obj, "duration", positive=True),
                    )
                )
            elif kind == "horizon":
                horizon = _duration(obj, "s", positive=True)
            else:
                raise ValueError(f"unknown type {kind!r} (job, worker, team, reclaim or horizon)")
        except (ValueError, TypeError) as e:
            raise TraceError(f"{name} line {lineno}: {e}") from None
    if not workers:
        raise TraceError(f"{name}: no worker lines; the simulator needs a fleet to place jobs on")
    unknown = sorted({r.worker_id for r in reclaims} - seen_workers)
    if unknown:
        raise TraceError(f"{name}: reclaim names unknown worker(s) {', '.join(unknown)}")
    jobs.sort(key=lambda j: (j.submit_s, j.id))
    return Workload(name, tuple(jobs), tuple(workers), tuple(teams), tuple(reclaims), horizon)


def load_trace(path: str) -> Workload:
    """Read a JSONL trace file (the format is in the module docstring)."""
    with open(path, encoding="utf-8") as f:
        return parse_trace(f, name=path)


def _known(obj: Mapping[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(obj) - allowed - {"type"})
    if extra:
        raise ValueError(f"unknown field(s) {', '.join(extra)}")


def _str(obj: Mapping[str, Any], key: str, default: str | None = None) -> str:
    v = obj.get(key, default)
    if not isinstance(v, str) or not v:
        raise ValueError(f"{key} must be a non-empty string")
    return v


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    v = obj.get(key)
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{key} must be a string or null")
    return v


def _num(obj: Mapping[str, Any], key: str, default: float, *, minimum: float = 0.0) -> float:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{key} must be a number, got {v!r}")
    if v < minimum:
        raise ValueError(f"{key} must be at least {minimum:g}, got {v!r}")
    return float(v)


def _int(obj: Mapping[str, Any], key: str, default: int, *, minimum: int = 0) -> int:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{key} must be an integer, got {v!r}")
    if v < minimum:
        raise ValueError(f"{key} must be at least {minimum}, got {v!r}")
    return int(v)


def _bool(obj: Mapping[str, Any], key: str, default: bool) -> bool:
    v = obj.get(key, default)
    if not isinstance(v, bool):
        raise ValueError(f"{key} must be true or false, got {v!r}")
    return v


def _duration(obj: Mapping[str, Any], key: str, *, positive: bool = False, signed: bool = False) -> float:
    if key not in obj:
        raise ValueError(f"missing {key}")
    v = obj[key]
    if signed and isinstance(v, int | float) and not isinstance(v, bool) and v < 0:
        return float(v)
    s = parse_duration(v)
    if positive and s <= 0:
        raise ValueError(f"{key} must be positive")
    return s


def _memory(obj: Mapping[str, Any], key: str, default: int) -> int:
    return parse_memory(obj.get(key, default))


def _priority(v: Any) -> int:
    if isinstance(v, str) and v.lower() in PRIORITY_NAMES:
        return PRIORITY_NAMES.index(v.lower())
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(PRIORITY_NAMES):
        return v
    raise ValueError(f"priority must be one of {', '.join(PRIORITY_NAMES)} (or 0-3), got {v!r}")


_JOB_FIELDS = {
    "id",
    "submit",
    "team",
    "priority",
    "cpu",
    "memory",
    "gpu",
    "gpu_type",
    "pool",
    "preemptible",
    "replicas",
    "runtime",
    "max_runtime",
    "checkpoint",
    "kind",
}


def _job(obj: Mapping[str, Any]) -> JobArrival:
    _known(obj, _JOB_FIELDS)
    runtime = _duration(obj, "runtime", positive=True)
    max_runtime = _duration(obj, "max_runtime", positive=True) if "max_runtime" in obj else DAY_S
    checkpoint = _duration(obj, "checkpoint", positive=True) if obj.get("checkpoint") is not None else None
    gpu = _int(obj, "gpu", 0)
    return JobArrival(
        id=_str(obj, "id"),
        submit_s=_duration(obj, "submit", signed=True),
        team=_str(obj, "team"),
        runtime_s=runtime,
        priority=_priority(obj.get("priority", "normal")),
        cpu=_num(obj, "cpu", 1.0),
        memory=_memory(obj, "memory", GIB),
        gpu=gpu,
        gpu_type=_opt_str(obj, "gpu_type") if gpu else None,
        pool=_opt_str(obj, "pool"),
        preemptible=_bool(obj, "preemptible", False),
        replicas=_int(obj, "replicas", 1, minimum=1),
        max_runtime_s=max_runtime,
        checkpoint_s=checkpoint,
        kind=_str(obj, "kind", "train"),
    )


def _worker(obj: Mapping[str, Any]) -> Worker:
    _known(obj, {"id", "cpu", "memory", "gpu", "gpu_type", "pool", "region", "spot"})
    cpu = _num(obj, "cpu", 0.0)
    if cpu <= 0:
        raise ValueError("cpu must be positive")
    return Worker(
        id=_str(obj, "id"),
        cpu=cpu,
        memory=_memory(obj, "memory", 0),
        gpu=_int(obj, "gpu", 0),
        gpu_type=_opt_str(obj, "gpu_type"),
        pool=_str(obj, "pool", "default"),
        region=_opt_str(obj, "region"),
        spot=_bool(obj, "spot", False),
    )


def _team(obj: Mapping[str, Any]) -> Team:
    _known(obj, {"name", "weight", "gpu_quota", "cpu_quota", "memory_quota"})
    weight = _num(obj, "weight", 1.0)
    if weight <= 0:
        raise ValueError("weight must be positive")
    quota = None
    if any(obj.get(k) is not None for k in ("gpu_quota", "cpu_quota", "memory_quota")):
        quota = Quota(
            cpu=_num(obj, "cpu_quota", 0.0) if obj.get("cpu_quota") is not None else None,
            memory=_memory(obj, "memory_quota", 0) if obj.get("memory_quota") is not None else None,
            gpu=_int(obj, "gpu_quota", 0) if obj.get("gpu_quota") is not None else None,
        )
    return Team(_str(obj, "name"), weight, quota)


def to_trace(workload: Workload) -> list[str]:
    """The workload as JSONL lines that :func:`parse_trace` reads back to an equal workload."""
    lines: list[dict[str, Any]] = []
    for w in workload.workers:
        lines.append(
            {
                "type": "worker",
                "id": w.id,
                "cpu": w.cpu,
                "memory": w.memory,
                "gpu": w.gpu,
                "gpu_type": w.gpu_type,
                "pool": w.pool,
                "region": w.region,
                "spot": w.spot,
            }
        )
    for t in workload.teams:
        q = t.quota
        lines.append(
            {
                "type": "team",
                "name": t.name,
                "weight": t.weight,
                "gpu_quota": q.gpu if q else None,
                "cpu_quota": q.cpu if q else None,
                "memory_quota": q.memory if q else None,
            }
        )
    for r in workload.reclaims:
        lines.append({"type": "reclaim", "worker": r.worker_id, "at": r.at_s, "duration": r.duration_s})
    if workload.horizon_s is not None:
        lines.append({"type": "horizon", "s": workload.horizon_s})
    for j in workload.jobs:
        lines.append(
            {
                "id": j.id,
                "submit": j.submit_s,
                "team": j.team,
                "priority": PRIORITY_NAMES[j.priority],
                "cpu": j.cpu,
                "memory": j.memory,
                "gpu": j.gpu,
                "gpu_type": j.gpu_type,
                "pool": j.pool,
                "preemptible": j.preemptible,
                "replicas": j.replicas,
                "runtime": j.runtime_s,
                "max_runtime": j.max_runtime_s,
                "checkpoint": j.checkpoint_s,
                "kind": j.kind,
            }
        )
    return [json.dumps(x) for x in lines]


# --- synthetic -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Scale:
    jobs_per_day: int
    gpu_nodes: tuple[tuple[str, int, int], ...]  # (gpu type, on-demand nodes, spot nodes), 8 GPUs each
    cpu_nodes: tuple[int, int]  # on-demand, spot; 96 cores each
    reclaims_per_day: int
    carry_over: int
    """Jobs still running from the day before at t=0, so the day starts at steady state."""
    research_gpu_quota: int
    infra_gpu_quota: int
    max_gang: int = 8


# The target fleet is sized from the job mix below (see _draw): at the mean arrival rate the work
# offered is ~79 % of the GPUs (on-demand plus spot) and ~75 % of the CPU pool, so afternoon peaks
# queue and nights drain; the research and infra GPU quotas sit near those teams' mean demand, so
# they bind at the peak.
_SCALES: dict[str, _Scale] = {
    "target": _Scale(
        100_000,
        (("a100", 1440, 310), ("h100", 560, 125)),
        (225, 62),
        reclaims_per_day=150,
        carry_over=10_500,
        research_gpu_quota=3000,
        infra_gpu_quota=1500,
    ),
    "small": _Scale(
        600,
        (("a100", 7, 2), ("h100", 3, 1)),
        (1, 1),
        reclaims_per_day=4,
        carry_over=50,
        research_gpu_quota=16,
        infra_gpu_quota=8,
        max_gang=2,
    ),
}

# (name, weight, share of submissions); research and infra carry GPU quotas.
_TEAMS = (
    ("vision", 2.0, 0.24),
    ("nlp", 3.0, 0.26),
    ("speech", 1.0, 0.14),
    ("research", 1.0, 0.16),
    ("recsys", 1.5, 0.12),
    ("infra", 0.5, 0.08),
)


def synthetic(kind: SyntheticKind = "target", *, seed: int = 0) -> Workload:
    """A seeded day of work: ``target`` is our production scale (100k jobs a day, ~10k running at
    once on 2,722 workers with 19,480 GPUs, 150 spot reclaims), ``small`` the same mix on 15
    workers (600 jobs) for tests and demos."""
    if kind not in _SCALES:
        raise ValueError(f"unknown synthetic workload {kind!r}: target or small")
    scale = _SCALES[kind]
    rng = random.Random(f"trainyard-sim:{kind}:{seed}")
    workers = _fleet(scale)
    teams = tuple(
        Team(
            name,
            weight,
            Quota(gpu=scale.research_gpu_quota)
            if name == "research"
            else Quota(gpu=scale.infra_gpu_quota)
            if name == "infra"
            else None,
        )
        for name, weight, _ in _TEAMS
    )
    jobs: list[JobArrival] = []
    carried = 0
    while carried < scale.carry_over:
        job = _draw(rng, f"carry-{carried:06d}", 0.0, scale.max_gang)
        # The jobs running at any instant are length-biased (a 24 h job is running 288 times as
        # often as a 5 min one), and what is left of each is uniform over its length: accepting
        # draws with probability runtime/day and keeping a uniform remainder gives yesterday's
        # work as it stands at midnight, so the day starts at steady state instead of empty.
        if rng.random() * DAY_S > job.runtime_s:
            continue
        left = max(60.0, job.runtime_s * rng.random())
        jobs.append(replace(job, submit_s=CARRY_OVER_AT, runtime_s=left))
        carried += 1
    for i, t in enumerate(_arrival_times(rng, scale.jobs_per_day)):
        jobs.append(_draw(rng, f"job-{i:06d}", t, scale.max_gang))
    jobs.sort(key=lambda j: (j.submit_s, j.id))
    spot = [w for w in workers if w.spot]
    reclaims: list[SpotReclaim] = []
    for _ in range(scale.reclaims_per_day):
        w = rng.choice(spot)
        # Spot interruptions come in bursts of one instance type; most come back within hours.
        reclaims.append(SpotReclaim(w.id, rng.uniform(0, DAY_S), rng.uniform(600, 4 * 3600)))
    reclaims.sort(key=lambda r: (r.at_s, r.worker_id))
    return Workload(f"synthetic-{kind}", tuple(jobs), tuple(workers), teams, tuple(reclaims), DAY_S)


def _fleet(scale: _Scale) -> list[Worker]:
    out: list[Worker] = []
    for gtype, on_demand, spot in scale.gpu_nodes:
        for i in range(on_demand + spot):
            out.append(
                Worker(
                    f"{gtype}-{i:05d}",
                    96,
                    1024 * GIB,
                    8,
                    gtype,
                    pool="gpu",
                    spot=i >= on_demand,
                )
            )
    on_demand, spot = scale.cpu_nodes
    for i in range(on_demand + spot):
        out.append(Worker(f"cpu-{i:05d}", 96, 384 * GIB, pool="cpu", spot=i >= on_demand))
    return out


def _arrival_times(rng: random.Random, n: int) -> list[float]:
    """``n`` submissions over a day, nearly twice as dense in the working afternoon as at night
    (rate ∝ 1 + 0.3·sin, peak at 15:00: sweeps and eval pipelines run around the clock), by
    rejection sampling of the daily profile."""
    w = 2 * math.pi / DAY_S
    phase = 2 * math.pi * 0.375
    out: list[float] = []
    while len(out) < n:
        t = rng.uniform(0.0, DAY_S)
        if rng.random() * 1.3 < 1.0 + 0.3 * math.sin(w * t - phase):
            out.append(t)
    out.sort()
    return out


def _lognormal(rng: random.Random, median_s: float, sigma: float, lo: float, hi: float) -> float:
    return min(max(median_s * math.exp(rng.gauss(0.0, sigma)), lo), hi)


def _draw(rng: random.Random, job_id: str, t: float, max_gang: int) -> JobArrival:
    """One job from the mix. Runtimes are lognormal (heavy-tailed) per class: most jobs are minutes
    long and most GPU-hours are in the few that run for many hours. The mean is ~2.4 h, so 100k
    submissions a day keep ~10,000 jobs running on average (Little's law)."""
    team = rng.choices([n for n, _, _ in _TEAMS], [s for _, _, s in _TEAMS])[0]
    priority = rng.choices((0, 1, 2, 3), (0.15, 0.70, 0.13, 0.02))[0]
    u = rng.random()
    if u < 0.42:  # evaluation: minutes, mostly one GPU, usually preemptible and cheap to rerun
        runtime = _lognormal(rng, 20 * 60, 0.7, 300, 2 * 3600)
        gpu = 1 if rng.random() < 0.6 else 0
        return JobArrival(
            job_id,
            t,
            team,
            runtime,
            priority=priority,
            cpu=4.0 if gpu else 2.0,
            memory=(32 if gpu else 8) * GIB,
            gpu=gpu,
            gpu_type=rng.choice(("a100", None)) if gpu else None,
            pool="gpu" if gpu else "cpu",
            preemptible=rng.random() < 0.7,
            max_runtime_s=2 * 3600,
            checkpoint_s=None,
            kind="eval",
        )
    if u < 0.71:  # CPU batch: data prep, tokenisation, feature jobs
        runtime = _lognormal(rng, 125 * 60, 1.0, 300, 12 * 3600)
        return JobArrival(
            job_id,
            t,
            team,
            runtime,
            priority=priority,
            cpu=float(rng.choice((2, 4, 4, 8, 8))),
            memory=rng.choice((8, 16, 32, 64)) * GIB,
            pool="cpu",
            preemptible=rng.random() < 0.6,
            max_runtime_s=min(DAY_S, max(2 * runtime, 3600.0)),
            checkpoint_s=rng.choice((None, 15 * 60.0)),
            kind="batch",
        )
    if u < 0.996:  # single-node training and fine-tuning
        runtime = _lognormal(rng, 2.8 * 3600, 1.0, 600, DAY_S)
        gpu = rng.choices((1, 2, 4, 8), (0.55, 0.25, 0.15, 0.05))[0]
        return JobArrival(
            job_id,
            t,
            team,
            runtime,
            priority=priority,
            cpu=float(8 * gpu),
            memory=64 * gpu * GIB,
            gpu=gpu,
            gpu_type=rng.choices(("a100", "h100", None), (0.5, 0.2, 0.3))[0],
            pool="gpu",
            preemptible=rng.random() < 0.6,
            max_runtime_s=DAY_S,
            checkpoint_s=rng.choice((15 * 60.0, 30 * 60.0, 3600.0)),
            kind="train",
        )
    # large gang training: whole 8-GPU nodes, hours to a day, always checkpointing
    runtime = _lognormal(rng, 7.5 * 3600, 0.8, 1800, DAY_S)
    return JobArrival(
        job_id,
        t,
        team,
        runtime,
        priority=max(priority, 1),
        cpu=64.0,
        memory=512 * GIB,
        gpu=8,
        gpu_type=rng.choice(("a100", "h100")),
        pool="gpu",
        preemptible=rng.random() < 0.4,
        replicas=min(rng.choices((2, 4, 8), (0.6, 0.3, 0.1))[0], max_gang),
        max_runtime_s=DAY_S,
        checkpoint_s=30 * 60.0,
        kind="train",
    )
