"""What budgets and usage cost the control plane over a month of N attempts, on SQLite and
PostgreSQL: the leader's budget sum (``BudgetWatch``) read whole (on start, every 15 minutes, when
prices or budgets change) and recomputed incrementally (every 5 s: the settled sum plus the attempts
open or just ended; 2,000 of the attempts still run), and a usage report
(``GET /v1/usage?by=user,gpu-type&since=30d``). Prints a table; ``--json`` writes the rows too.

    .venv/bin/python bench/budgets.py --attempts 10000 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import postgres_db

from trainyard.model.pricing import MICROS, Prices
from trainyard.model.records import User
from trainyard.server.hub import Kick
from trainyard.server.metrics import Metrics
from trainyard.server.services.usage import BudgetWatch, UsageService
from trainyard.store.schema import job_attempts, jobs, workers
from trainyard.store.sql import SqlStore

NOW = datetime(2026, 12, 28, 12, tzinfo=UTC).timestamp()
MONTH_START = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
TEAMS = ("vision", "nlp", "speech", "recsys")
ADMIN = User("root", "ops", "admin")


def seed(store: SqlStore, n: int, running: int) -> None:
    """N attempts spread over the month, the last ``running`` of them still running (a fleet's
    worth), four teams, 20 users, 32 workers (a quarter of them spot)."""
    with store.transaction() as conn:
        conn.execute(
            workers.insert(),
            [
                {
                    "id": f"w{i}",
                    "name": f"w{i}",
                    "hostname": f"w{i}",
                    "pool": "gpu",
                    "cpu": 64,
                    "memory": 512 << 30,
                    "gpu": 8,
                    "gpu_type": "a100" if i % 2 else "h100",
                    "labels": {"spot": "true"} if i % 4 == 0 else {},
                    "status": "ALIVE",
                    "token_hash": f"h{i}",
                    "registered_at": MONTH_START,
                    "last_heartbeat": NOW,
                }
                for i in range(32)
            ],
        )
    span = NOW - MONTH_START
    for lo in range(0, n, 5000):
        job_rows, attempt_rows = [], []
        for i in range(lo, min(n, lo + 5000)):
            start = MONTH_START + span * i / n
            is_running = i >= n - running
            job_rows.append(
                {
                    "id": f"j{i:08d}",
                    "user_name": f"u{i % 20}",
                    "team": TEAMS[i % 4],
                    "status": "RUNNING" if is_running else "SUCCEEDED",
                    "priority": 1,
                    "cpu": 8,
                    "memory": 64 << 30,
                    "gpu": 1 + i % 4,
                    "max_runtime": 86400,
                    "spec": {},
                    "spec_hash": "x",
                    "created_at": start,
                    "updated_at": start,
                    "queued_at": start,
                }
            )
            attempt_rows.append(
                {
                    "job_id": f"j{i:08d}",
                    "number": 1,
                    "worker_id": f"w{i % 32}",
                    "lease_token": "t",
                    "status": "RUNNING" if is_running else "SUCCEEDED",
                    "gpu_indices": [],
                    "scheduled_at": start,
                    "started_at": start,
                    "finished_at": None if is_running else start + 3600,
                }
            )
        with store.transaction() as conn:
            conn.execute(jobs.insert(), job_rows)
            conn.execute(job_attempts.insert(), attempt_rows)
    for t in TEAMS:
        store.set_team(t, {"monthly_budget": 10_000_000 * MICROS})
    store.usage.set_prices(
        Prices({"a100": 2_480_000, "h100": 4_100_000}, cpu_hour=40_000, gib_hour=5_000), "bench"
    )


def timed(fn: object, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t0)
    return out


def measure(backend: str, url: str, n: int, running: int, repeat: int) -> dict[str, object]:
    clock = [NOW]
    store = SqlStore(url, clock=lambda: clock[0])
    store.migrate()
    try:
        t0 = time.perf_counter()
        seed(store, n, running)
        seeded = time.perf_counter() - t0
        if backend == "postgres":
            # What autovacuum does soon after a bulk load: the planner needs the table's statistics.
            with store.transaction() as conn:
                conn.exec_driver_sql("ANALYZE job_attempts")
                conn.exec_driver_sql("ANALYZE jobs")
        watch = BudgetWatch(store, Metrics(), clock=lambda: clock[0])
        usage = UsageService(store, watch, Kick(), clock=lambda: clock[0])

        def full_read() -> None:
            watch.invalidate()
            watch.holds()

        def recompute() -> None:
            # What the leader does every 5 s: the settled sum plus the attempts open or just ended.
            clock[0] += 6
            watch.holds()

        def report() -> None:
            usage._report(None, ("user", "gpu-type"), clock[0] - 30 * 86400, clock[0])

        fulls = timed(full_read, repeat)
        recomputes = timed(recompute, repeat)
        reports = timed(report, repeat)
    finally:
        store.close()
    return {
        "backend": backend,
        "attempts": n,
        "running": running,
        "seed_s": seeded,
        "budget_full_p50_ms": statistics.median(fulls) * 1000,
        "budget_recompute_p50_ms": statistics.median(recomputes) * 1000,
        "budget_recompute_max_ms": max(recomputes) * 1000,
        "report_p50_ms": statistics.median(reports) * 1000,
        "n": repeat,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attempts", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--running", type=int, default=2000, help="attempts still running (at most N)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    rows = []
    for n in args.attempts:
        for backend in args.backends:
            if backend == "sqlite":
                with tempfile.TemporaryDirectory() as d:
                    rows.append(
                        measure(backend, f"sqlite:///{d}/state.db", n, min(n, args.running), args.repeat)
                    )
            else:
                with postgres_db("ty_bench_budgets") as url:
                    rows.append(measure(backend, url, n, min(n, args.running), args.repeat))
            r = rows[-1]
            print(f"  {backend} {n}: seeded in {r['seed_s']:.1f} s", file=sys.stderr)
    cols = ("full read p50", "recompute p50", "max", "report p50")
    print(f"{'backend':<10}{'attempts':>10}" + "".join(f"{c:>16}" for c in cols) + f"{'n':>4}")
    for r in rows:
        values = (
            r["budget_full_p50_ms"],
            r["budget_recompute_p50_ms"],
            r["budget_recompute_max_ms"],
            r["report_p50_ms"],
        )
        print(
            f"{r['backend']:<10}{r['attempts']:>10}"
            + "".join(f"{v:>13.0f} ms" for v in values)
            + f"{r['n']:>4}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
