"""The leader's whole scheduler cycle on a real store: 2,000 workers, 10,000 running jobs, 5,000
pending ones that do not fit (the queue the issue's target sets), and a little churn between cycles
(jobs ending, jobs submitted, as a busy fleet has every second). ``SchedulerLoop.schedule_once``
from the store read to the leases and pending reasons, median of a few cycles, measured two ways:
the picture dropped before each cycle (a full reread of every pending job and live attempt, as
every cycle did before) and kept between cycles (only the changed jobs reread).

Seeding goes around the API (rows cloned from one submitted job, with one event each, as the store
writes them) so the bench takes seconds; the cycles themselves go through the real code.

    .venv/bin/python bench/leader_cycle.py [--running 10000 --pending 5000 --workers 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from trainyard.cache.memory import MemoryCache
from trainyard.model.records import User
from trainyard.model.spec import JobSpec
from trainyard.model.states import AttemptOutcome, JobStatus
from trainyard.scheduler.snapshot import SchedulerConfig
from trainyard.server.metrics import Metrics
from trainyard.server.services.board import QueueBoards
from trainyard.server.services.replica import Replica
from trainyard.server.services.scheduling import SchedulerLoop
from trainyard.store.schema import job_attempts, job_events, jobs
from trainyard.store.sql import FinishReport, SqlStore

USER = User("alice", "vision", "user")
CHURN = 20  # jobs that end and jobs submitted between two cycles


def _seed(store: SqlStore, n_workers: int, n_running: int, n_pending: int) -> list[str]:
    worker_ids = []
    for i in range(n_workers):
        w, _ = store.register_worker(
            name=f"w{i:05d}",
            hostname=f"w{i:05d}",
            pool="default",
            region=None,
            cpu=8,
            memory=64 << 30,
            gpu=0,
            gpu_type=None,
            labels={},
            version="bench",
        )
        worker_ids.append(w.id)
    small = store.submit(USER, JobSpec.model_validate({"command": ["true"], "resources": {"cpu": 1.5}})).job
    big = store.submit(USER, JobSpec.model_validate({"command": ["true"], "resources": {"cpu": 4}})).job
    clone_jobs(store, small.id, [worker_ids[i % n_workers] for i in range(n_running)], 0)
    clone_jobs(store, big.id, [], n_pending)
    return worker_ids


def clone_jobs(
    store: SqlStore, template_id: str, running_on: list[str], n_pending: int
) -> list[tuple[str, str, str]]:
    """Copies of a submitted job's row, one RUNNING on each worker of ``running_on`` (attempt 1) and
    ``n_pending`` PENDING ones, each with its event; the template is removed. (job, worker, lease
    token) of the running ones."""
    now = store.db.clock()
    held = []
    with store.db.engine.begin() as conn:
        template = dict(conn.execute(sa.select(jobs).where(jobs.c.id == template_id)).one()._mapping)
        rows, attempts, events = [], [], []
        for i in range(len(running_on) + n_pending):
            row = dict(template)
            job_id = "jb" + uuid.uuid4().hex[:24]
            row.update(id=job_id, queued_at=now + i * 1e-3, created_at=now, updated_at=now)
            if i < len(running_on):
                wid = running_on[i]
                token = uuid.uuid4().hex
                row.update(
                    status=JobStatus.RUNNING.value,
                    attempt=1,
                    tries=1,
                    lease_token=token,
                    worker_id=wid,
                    started_at=now,
                    deadline=now + row["max_runtime"],
                )
                attempts.append(
                    {
                        "job_id": job_id,
                        "number": 1,
                        "worker_id": wid,
                        "lease_token": token,
                        "status": JobStatus.RUNNING.value,
                        "gpu_indices": [],
                        "scheduled_at": now,
                        "started_at": now,
                    }
                )
                held.append((job_id, wid, token))
            rows.append(row)
            events.append(
                {
                    "event_id": str(uuid.uuid4()),
                    "job_id": job_id,
                    "team": row["team"],
                    "type": "submitted",
                    "from_status": None,
                    "to_status": row["status"],
                    "attempt": row["attempt"],
                    "at": now,
                    "data": {},
                }
            )
        if rows:
            conn.execute(jobs.insert(), rows)
        if attempts:
            conn.execute(job_attempts.insert(), attempts)
        if events:
            conn.execute(job_events.insert(), events)
        conn.execute(jobs.delete().where(jobs.c.id == template_id))
    return held


def _churn(store: SqlStore, running: list[Any], drained: set[str]) -> None:
    """A few jobs end and as many are submitted (too big to fit: the queue only grows).

    Each worker runs five 1.5-cpu jobs of its 8 cpu, so the pending 4-cpu jobs fit on none; one job
    ending leaves 2 cpu, but three ending on one worker leave 5, and a 4-cpu job then fits. The
    store lists running jobs in no set order (random ids), so taking the first ones made that
    happen about one run in five, and the cycle then placed a job. So each ending job is on a worker
    no earlier churn touched (``drained``): none is left more than 2 cpu, whatever the order."""
    ending = []
    for r in sorted(running, key=lambda r: (r.worker_id, r.id)):
        if r.worker_id not in drained:
            drained.add(r.worker_id)
            ending.append(r)
            if len(ending) == CHURN:
                break
    else:
        raise SystemExit("leader_cycle: more cycles than workers to end jobs on; use fewer --cycles")
    for r in ending:
        store.report_finished(
            FinishReport(r.id, r.attempt, r.lease_token, r.worker_id, AttemptOutcome.SUCCEEDED, 0)
        )
    for _ in range(CHURN):
        store.submit(USER, JobSpec.model_validate({"command": ["true"], "resources": {"cpu": 4}}))


def leader_cycle(
    n_running: int = 10_000, n_pending: int = 5_000, n_workers: int = 2_000, cycles: int = 5
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlStore(f"sqlite:///{Path(tmp) / 'state.db'}")
        store.migrate()
        try:
            worker_ids = _seed(store, n_workers, n_running, n_pending)
            cache = MemoryCache()
            for wid in worker_ids:
                cache.heartbeat(wid, 3600)
            replica = Replica(cache, heartbeat_interval=10, restart_grace=60)
            replica.lead()
            loop = SchedulerLoop(
                store,
                replica,
                QueueBoards(store, replica),
                Metrics(),
                config=SchedulerConfig(),
                stop_grace_s=60,
            )
            loop.schedule_once()  # the first cycle reads everything (and writes every pending reason)
            out: dict[str, list[float]] = {"full": [], "incremental": []}
            drained: set[str] = set()
            for i in range(2 * cycles):
                mode = "full" if i % 2 else "incremental"
                _churn(store, store.running_for_scheduling(), drained)
                if mode == "full":
                    loop._picture = None  # what each cycle did before the picture was kept
                t0 = time.perf_counter()
                leases = loop.schedule_once()
                out[mode].append((time.perf_counter() - t0) * 1000)
                assert not leases, "the bench's pending jobs must not fit"
        finally:
            store.close()
    full, inc = statistics.median(out["full"]), statistics.median(out["incremental"])
    return {
        "value": inc,
        "unit": "ms",
        "n": n_running,
        "full_reread_ms": full,
        "note": f"{n_running // 1000}k running, {n_pending // 1000}k pending, {n_workers} workers, SQLite: "
        f"incremental {inc:.0f} ms, full reread {full:.0f} ms",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--running", type=int, default=10_000)
    ap.add_argument("--pending", type=int, default=5_000)
    ap.add_argument("--workers", type=int, default=2_000)
    ap.add_argument("--cycles", type=int, default=5)
    args = ap.parse_args()
    r = leader_cycle(args.running, args.pending, args.workers, args.cycles)
    print(f"{'metric':<30}{'value':>12}  {'unit':<8}note")
    print(f"{'leader_cycle':<30}{r['value']:>12.1f}  {r['unit']:<8}{r['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
