"""Do queries stay flat as the tables grow? The same live picture on an empty database and on one
with N finished jobs of history (their attempts and events too), timed side by side.

    python bench/retention.py                  # 1,000,000 history jobs on SQLite
    python bench/retention.py --rows 10000000  # the issue's figure (about 10 GB of disk, minutes)

Both databases hold the same live picture (20 workers, 400 leased jobs, 1,000 pending in a pool no
worker serves, so every cycle decides over them); the big one adds ``--rows`` finished jobs written
straight to SQLite (an attempt and four events each, cancelled ones none and two). Each operation
runs in alternating rounds on the two, so the shared machine's noise lands on both alike, through
the services the REST routes call (the HTTP layer costs the same on both):

  ls_first_page     GET /v1/jobs, the first page of 50 (an admin: every team)
  ls_team_page      the same for a team's user (visible to their team only)
  ls_status_page    GET /v1/jobs?status=SCHEDULED (the live ones, among millions finished)
  ls_user_page      GET /v1/jobs?user=... (one user's)
  get_job           GET /v1/jobs/{id} of a live job; get_old_job: of one in the history
  job_events        GET /v1/jobs/{id}/events
  submit            POST /v1/jobs (one at a time, through group commit)
  scheduler_cycle   one leader cycle: snapshot, decide, leases, reasons, the queue board
  metrics_gauges    what GET /metrics counts (jobs by status, pending by pool)

Then it prunes (archive + delete) the oldest ``--prune`` jobs of the big one in batches of 200 and
reports the rate and the longest delete transaction (SQLite's one write lock is held that long).
Prints a table of medians in ms and big/empty ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from trainyard.model.ids import _b32
from trainyard.model.records import User
from trainyard.model.spec import JobSpec
from trainyard.server.platform import Platform
from trainyard.server.settings import Settings

ADMIN = User("admin", "default", "admin")
TEAMS = [f"team{k}" for k in range(10)]
USERS = [User(f"user{k}", TEAMS[k % 10], "user") for k in range(50)]
LIVE_LEASED = 400
LIVE_PENDING = 1000
WORKERS = 20


def spec(i: int, team: str, pool: str | None = None) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": f"train-{i % 97}",
            "command": ["python", "train.py", "--seed", str(i)],
            "resources": {"cpu": 1, "memory": "2Gi"},
            "team": team,
            **({"pool": pool} if pool else {}),
        }
    )


def platform(home: Path) -> Platform:
    p = Platform(Settings(home=home, heartbeat_interval=3600.0))
    p.store.migrate()
    p.replica.lead()
    return p


def close(p: Platform) -> None:
    p.writes.close()
    p.close()


async def live_picture(p: Platform) -> None:
    """Workers, leased jobs and pending jobs that no worker can take: the same on both databases."""
    for w in range(WORKERS):
        await p.fleet.register(
            cached_uris=None,
            name=f"w{w}",
            hostname=f"w{w}",
            pool="default",
            region=None,
            cpu=64,
            memory=256 << 30,
            gpu=0,
            gpu_type=None,
            labels={},
            version="bench",
        )
    for i in range(LIVE_LEASED):
        await p.jobs.submit(USERS[i % 50], spec(i, USERS[i % 50].team), None)
    for _ in range(20):
        if not await asyncio.to_thread(p.scheduler.schedule_once):
            break
    for i in range(LIVE_PENDING):
        await p.jobs.submit(USERS[i % 50], spec(i, USERS[i % 50].team, pool="nowhere"), None)


def fill_history(db: Path, rows: int, now: float) -> float:
    """``rows`` finished jobs over the 180 days before the live ones, written with executemany in
    large transactions (the store's own path would take hours for millions). Returns seconds."""
    t0 = time.perf_counter()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    cols = [r[1] for r in conn.execute("PRAGMA table_info(jobs)")]
    specs = {t: orjson.dumps({**spec(0, t).canonical(), "team": t}).decode() for t in TEAMS}
    rng = random.Random(7)
    start = now - 180 * 86400
    step = (now - 3600 - start) / rows
    ev = 0
    base = {c: None for c in cols}
    chunk = 50_000
    for lo in range(0, rows, chunk):
        jobs, atts, events = [], [], []
        for i in range(lo, min(rows, lo + chunk)):
            t = start + i * step
            u = USERS[i % 50]
            r = rng.random()
            status = "SUCCEEDED" if r < 0.8 else "FAILED" if r < 0.92 else "CANCELLED"
            job_id = "j" + _b32(int(t * 1000), 10) + _b32(i, 16)
            ran = status != "CANCELLED"
            fin = t + 600
            row = dict(base)
            row.update(
                id=job_id,
                name=f"train-{i % 97}",
                user_name=u.name,
                team=u.team,
                status=status,
                priority=1,
                pool=None,
                cpu=1.0,
                memory=2 << 30,
                gpu=0,
                max_runtime=86400.0,
                preemptible=1,
                replicas=1,
                require_region=0,
                spec=specs[u.team],
                spec_hash="0" * 64,
                created_at=t,
                updated_at=fin,
                queued_at=t,
                started_at=t + 5 if ran else None,
                finished_at=fin,
                attempt=1 if ran else 0,
                tries=1 if ran else 0,
                exit_code=0 if status == "SUCCEEDED" else 1 if ran else None,
                reason=None if status == "SUCCEEDED" else "exit 1" if ran else "cancelled by bench",
                replica_rank=0,
                awaiting_dependencies=0,
            )
            jobs.append(tuple(row[c] for c in cols))
            kinds = (
                [
                    ("submitted", None, "PENDING"),
                    ("scheduled", "PENDING", "SCHEDULED"),
                    ("started", "SCHEDULED", "RUNNING"),
                    ("finished", "RUNNING", status),
                ]
                if ran
                else [("submitted", None, "PENDING"), ("cancelled", "PENDING", "CANCELLED")]
            )
            for k, (kind, src, dst) in enumerate(kinds):
                ev += 1
                events.append((f"bench-{ev}", job_id, u.team, kind, src, dst, 1 if k else 0, t + k, "{}"))
            if ran:
                atts.append(
                    (job_id, 1, f"w{i % WORKERS}", "0" * 32, status, status, "[]", t + 1, t + 5, fin, 0, None)
                )
        conn.executemany(f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", jobs)
        conn.executemany(
            "INSERT INTO job_attempts (job_id, number, worker_id, lease_token, status, outcome, gpu_indices,"
            " scheduled_at, started_at, finished_at, exit_code, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            atts,
        )
        conn.executemany(
            "INSERT INTO job_events (event_id, job_id, team, type, from_status, to_status, attempt, at, data)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            events,
        )
        conn.commit()
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - t0


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return (time.perf_counter() - t0) * 1000


async def compare(
    small: Platform, big: Platform, rounds: int, live_id: str, old_id: str
) -> list[tuple[str, float, float]]:
    """(operation, median ms on the empty database, on the big one), measured in alternating rounds."""

    def ops(p: Platform, job_id: str) -> dict[str, Callable[[], Awaitable[Any]]]:
        def ls(user: User, **kw: Any) -> Callable[[], Awaitable[Any]]:
            base: dict[str, Any] = {"statuses": [], "owner": None, "team": None, "name": None}
            return lambda: p.jobs.list_jobs(user, **{**base, **kw}, limit=50, cursor=None)

        return {
            "ls_first_page": ls(ADMIN),
            "ls_team_page": ls(USERS[3]),
            "ls_status_page": ls(ADMIN, statuses=["SCHEDULED"]),
            "ls_user_page": ls(ADMIN, owner=USERS[7].name),
            "get_job": lambda: p.jobs.job_view(ADMIN, live_id),
            "get_old_job": lambda: p.jobs.job_view(ADMIN, job_id),
            "job_events": lambda: p.jobs.events(live_id),
            "submit": lambda: p.jobs.submit(USERS[1], spec(1, USERS[1].team, pool="nowhere"), None),
            "scheduler_cycle": lambda: asyncio.to_thread(p.scheduler.schedule_once),
            "metrics_gauges": lambda: asyncio.to_thread(p.fleet.queue_gauges),
        }

    a, b = ops(small, live_id), ops(big, old_id)
    out = []
    for name in a:
        n = max(5, rounds // 4) if name in ("scheduler_cycle", "metrics_gauges") else rounds
        xs: list[float] = []
        ys: list[float] = []
        for _ in range(n):
            xs.append(await timed(a[name]))
            ys.append(await timed(b[name]))
        out.append((name, statistics.median(xs), statistics.median(ys)))
    return out


def prune_figures(p: Platform, jobs: int) -> tuple[float, float, int]:
    """Prune the oldest ``jobs`` finished jobs: (jobs/s, longest delete transaction in ms, archived)."""
    commits: list[float] = []
    real = p.store.archive.commit_batch

    def commit(batch: Any, key: str) -> list[str]:
        t0 = time.perf_counter()
        try:
            return real(batch, key)
        finally:
            commits.append((time.perf_counter() - t0) * 1000)

    p.store.archive.commit_batch = commit  # type: ignore[method-assign]
    t0 = time.perf_counter()
    report = p.retention.prune(time.time(), batch=200, max_jobs=jobs)
    took = time.perf_counter() - t0
    return report.jobs / took, max(commits or [0.0]), report.jobs


async def run(rows: int, rounds: int, prune: int, work: Path) -> dict[str, Any]:
    small_home, big_home = work / "empty", work / "big"
    small = platform(small_home)
    await live_picture(small)
    close(small)
    big_home.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(small_home / "trainyard.db")
    dst = sqlite3.connect(big_home / "trainyard.db")
    src.backup(dst)  # the same live picture in both
    src.close()
    dst.close()
    fill_s = fill_history(big_home / "trainyard.db", rows, time.time())
    size = (big_home / "trainyard.db").stat().st_size
    small, big = platform(small_home), platform(big_home)
    try:
        for p in (small, big):
            for w in p.store.list_workers():  # the registrations' heartbeats were in memory
                p.cache.heartbeat(w.id, 3600.0)
        live = small.store.list_jobs(small_jobfilter(), 1)[0][0].id
        old = big.store.list_jobs(small_jobfilter(status=["SUCCEEDED"]), 1, None)[0][0].id
        table = await compare(small, big, rounds, live, old)
        rate, longest, pruned = await asyncio.to_thread(prune_figures, big, prune)
    finally:
        close(small)
        close(big)
    return {
        "rows": rows,
        "fill_s": fill_s,
        "db_bytes": size,
        "table": table,
        "prune": (rate, longest, pruned),
    }


def small_jobfilter(status: list[str] | None = None) -> Any:
    from trainyard.store import JobFilter

    return JobFilter(status=status or [])


def print_table(r: dict[str, Any]) -> float:
    gb, took = r["db_bytes"] / 1e9, r["fill_s"]
    print(f"history: {r['rows']:,} finished jobs ({gb:.2f} GB of SQLite), written in {took:.0f} s")
    print(f"{'operation':<18}{'empty ms':>10}{'big ms':>10}{'ratio':>8}")
    worst = 0.0
    for name, x, y in r["table"]:
        ratio = y / x if x > 0 else float("inf")
        worst = max(worst, ratio)
        print(f"{name:<18}{x:>10.2f}{y:>10.2f}{ratio:>7.2f}x")
    rate, longest, pruned = r["prune"]
    print(
        f"prune: {pruned:,} jobs archived at {rate:,.0f} jobs/s; longest delete transaction {longest:.0f} ms"
    )
    return worst


def retention_flatness(rows: int = 200_000) -> dict[str, Any]:
    """The bench/run.py row: the worst big/empty ratio over the operations above, ``rows`` of history."""
    with tempfile.TemporaryDirectory(prefix="ty-retention-") as d:
        r = asyncio.run(run(rows, 30, 2000, Path(d)))
    worst = print_table(r)
    rate, longest, _ = r["prune"]
    names = ", ".join(f"{n} {y / x:.2f}x" for n, x, y in r["table"] if x > 0)
    return {
        "value": worst,
        "unit": "x",
        "n": rows,
        "note": f"worst big/empty ratio over {rows:,} history jobs ({names}); prune {rate:,.0f} jobs/s, "
        f"longest delete tx {longest:.0f} ms",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--rows", type=int, default=1_000_000, help="finished jobs of history in the big database"
    )
    ap.add_argument("--rounds", type=int, default=60, help="samples per operation and database")
    ap.add_argument(
        "--prune", type=int, default=20_000, help="jobs to prune from the big database at the end"
    )
    ap.add_argument("--dir", type=Path, default=None, help="where the databases go (default: a temp dir)")
    args = ap.parse_args()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        r = asyncio.run(run(args.rows, args.rounds, args.prune, args.dir))
    else:
        with tempfile.TemporaryDirectory(prefix="ty-retention-") as d:
            r = asyncio.run(run(args.rows, args.rounds, args.prune, Path(d)))
    worst = print_table(r)
    print(f"worst ratio {worst:.2f}x (aim: within 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
