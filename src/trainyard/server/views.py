"""JSON shapes of the public REST API, rendered from store records."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from trainyard.model.pricing import dollars
from trainyard.model.records import ArtifactRecord, Attempt, Event, Job, Team, Worker
from trainyard.model.states import TERMINAL, JobStatus, Priority

_PRIORITY = {p.rank: p.value for p in Priority}


def iso(ts: float | None) -> str | None:
    """A unix time as ISO 8601 in UTC with milliseconds (``…Z``); None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def attempt_json(a: Attempt) -> dict[str, Any]:
    """An attempt as the API shows it."""
    return {
        "number": a.number,
        "worker_id": a.worker_id,
        "status": a.status,
        "outcome": a.outcome,
        "gpu_indices": a.gpu_indices,
        "scheduled_at": iso(a.scheduled_at),
        "started_at": iso(a.started_at),
        "finished_at": iso(a.finished_at),
        "exit_code": a.exit_code,
        "reason": a.reason,
        "stderr_tail": a.stderr_tail,
        "log_bytes": a.log_bytes,
    }


def array_json(j: Job) -> dict[str, Any] | None:
    """An array's summary for its parent's view: its indices and cap, how many tasks, and how many
    are in each status (``done``: ended, whichever way)."""
    if not j.is_array:
        return None
    spec = j.spec.get("array") or {}
    counts = {s: n for s, n in (j.array_counts or {}).items() if n}
    return {
        "indices": spec.get("indices"),
        "parallelism": spec.get("parallelism"),
        "tasks": j.array_tasks,
        "counts": counts,
        "done": sum(n for s, n in counts.items() if JobStatus(s) in TERMINAL),
    }


def task_json(j: Job) -> dict[str, Any]:
    """An array's task as its parent's task list shows it (``GET /v1/jobs/{id}`` has the rest)."""
    return {
        "id": j.id,
        "index": j.array_index,
        "status": j.status.value,
        "attempt": j.attempt,
        "exit_code": j.exit_code,
        "reason": j.reason,
        "pending_reason": j.pending_reason if j.status is JobStatus.PENDING else None,
        "worker_id": j.worker_id,
        "started_at": iso(j.started_at),
        "finished_at": iso(j.finished_at),
    }


def job_json(j: Job) -> dict[str, Any]:
    """A job as the API shows it, with its attempts, its ranks (gangs), its tasks' counts (arrays)
    and its URLs."""
    base = f"/v1/jobs/{j.id}"
    urls = {
        "self": base,
        "logs": f"{base}/logs",
        "artifacts": f"{base}/artifacts",
        "events": f"{base}/events",
    }
    if j.is_array:
        urls["tasks"] = f"{base}/tasks"
    return {
        "id": j.id,
        "name": j.name,
        "status": j.status.value,
        "user": j.user,
        "team": j.team,
        "priority": _PRIORITY.get(j.priority, "normal"),
        "pool": j.pool,
        "spec": j.spec,
        "created_at": iso(j.created_at),
        "updated_at": iso(j.updated_at),
        "started_at": iso(j.started_at),
        "finished_at": iso(j.finished_at),
        "attempt": j.attempt,
        "exit_code": j.exit_code,
        "reason": j.reason,
        "pending_reason": j.pending_reason if j.status.value == "PENDING" else None,
        # Filled in for pending jobs from the scheduler's board (Platform.with_queue_info).
        "queue_position": None,
        "estimated_start_at": None,
        "retry_after": iso(j.not_before),
        "worker_id": j.worker_id,
        "attempts": [attempt_json(a) for a in j.attempts],
        "gang_id": j.gang_id,
        "rank": j.replica_rank,
        # A gang's other ranks (rank 0 is this job); each is readable as a job of its own.
        "replicas": [
            {
                "rank": r.rank,
                "job_id": r.job_id,
                "status": r.status.value,
                "attempt": r.attempt,
                "worker_id": r.worker_id,
                "exit_code": r.exit_code,
                "reason": r.reason,
            }
            for r in j.replicas
        ],
        # An array's parent: its tasks' counts (GET .../tasks pages them); a task: its array.
        "array": array_json(j),
        "array_id": j.array_id,
        "array_index": j.array_index,
        # Retention moved it to object storage (``yard admin prune``): read-only from now on.
        "archived": j.archived,
        "urls": urls,
    }


def event_json(e: Event) -> dict[str, Any]:
    """A job event as the API shows it."""
    return {
        "id": e.id,
        "event_id": e.event_id,
        "job_id": e.job_id,
        "team": e.team,
        "type": e.type,
        "from_status": e.from_status,
        "to_status": e.to_status,
        "attempt": e.attempt,
        "at": iso(e.at),
        "data": e.data,
    }


def artifact_json(a: ArtifactRecord, url: str) -> dict[str, Any]:
    """An artifact with its download URL as the API shows it."""
    # `name` is the contract's field (DESIGN.md); `path` is the same, kept for existing clients.
    return {
        "name": a.path,
        "path": a.path,
        "size": a.size,
        "sha256": a.sha256,
        "attempt": a.attempt,
        "url": url,
    }


def worker_json(w: Worker, allocated: tuple[float, int, int], running: int, alive: bool) -> dict[str, Any]:
    """A worker as the API shows it; one that is not alive (and not dead yet) is UNRESPONSIVE."""
    return {
        "id": w.id,
        "name": w.name,
        "hostname": w.hostname,
        "pool": w.pool,
        "region": w.region,
        "status": w.status if (alive or w.status == "DEAD") else "UNRESPONSIVE",
        "capacity": {"cpu": w.cpu, "memory": w.memory, "gpu": w.gpu, "gpu_type": w.gpu_type},
        "allocated": {"cpu": allocated[0], "memory": allocated[1], "gpu": allocated[2]},
        "running": running,
        "labels": w.labels,
        "cached_uris": list(w.cached_uris),
        "version": w.version,
        "registered_at": iso(w.registered_at),
        "last_heartbeat": iso(w.last_heartbeat),
    }


def team_json(t: Team) -> dict[str, Any]:
    """A team with its weight and quotas as the API shows it."""
    return {
        "name": t.name,
        "weight": t.weight,
        "quotas": {
            "cpu": t.cpu_quota,
            "memory": t.memory_quota,
            "gpu": t.gpu_quota,
            "gpu_by_type": dict(t.gpu_type_quotas),
        },
        # Exact dollars as text ("5000"), as prices are; null: no budget.
        "monthly_budget": None if t.monthly_budget is None else dollars(t.monthly_budget),
    }
