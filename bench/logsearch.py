"""Log search benchmark: the store's index (SQLite FTS5, PostgreSQL tsvector + GIN) holding N log
lines of training-like output from 4 teams' jobs, indexed in 1 MiB chunks as the indexer does; then
searches as a member of one team sees them: a rare phrase ("CUDA out of memory", 1 line in 5,000),
a common word (a page of 50 from many matches) and one job's lines. Reports the median search
latency on SQLite, PostgreSQL's in the note, and the indexing rate of each.

    .venv/bin/python bench/logsearch.py [--lines 200000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from common import pct, postgres_db

from trainyard.model.logsearch import chunk_lines, query_words
from trainyard.store.logsearch import LogQuery, QueuedChunk, enqueue_chunk
from trainyard.store.sql import SqlStore

TEAMS = ("vision", "nlp", "speech", "rl")
JOBS = 200
CHUNK_BYTES = 1 << 20
OOM_EVERY = 5000
QUERIES = (
    ("rare phrase", "CUDA out of memory", {}),
    ("common word", "loss", {}),
    ("one job", "loss", {"job_id": "jbench00007"}),
)


def _log(job: int, lines: int, rng: random.Random) -> bytes:
    out = []
    for i in range(lines):
        if rng.randrange(OOM_EVERY) == 0:
            out.append("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
        elif i % 50 == 0:
            out.append(f"[job {job}] epoch {i // 50} val_acc {rng.random():.4f} checkpoint saved")
        else:
            out.append(f"step {i} loss {rng.random() * 3:.4f} lr 3.0e-04 grad_norm {rng.random() * 9:.2f}")
    return ("\n".join(out) + "\n").encode()


def _fill(store: SqlStore, total: int) -> float:
    """Index ``total`` lines; returns lines per second."""
    rng = random.Random(7)
    per_job = total // JOBS
    indexed = 0
    t0 = time.perf_counter()
    for j in range(JOBS):
        job_id, team = f"jbench{j:05d}", TEAMS[j % len(TEAMS)]
        log = _log(j, per_job, rng)
        chunks = [(a, log[a : a + CHUNK_BYTES]) for a in range(0, len(log), CHUNK_BYTES)]
        for seq, (start, data) in enumerate(chunks):
            with store.db.tx() as conn:
                enqueue_chunk(conn, job_id, 1, seq, store.clock())
            prev = chunks[seq - 1][1] if seq else None
            nxt = chunks[seq + 1][1] if seq + 1 < len(chunks) else None
            lines = chunk_lines(start, data, prev, nxt)
            store.index_log_chunk(QueuedChunk(job_id, 1, seq, store.clock()), team, lines)
            indexed += len(lines)
    return indexed / (time.perf_counter() - t0)


def _searches(store: SqlStore, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name, _, _ in QUERIES}
    for _ in range(rounds):
        for name, q, kw in QUERIES:
            query = LogQuery(words=query_words(q), visible_team="vision", limit=51, **kw)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            store.search_logs(query)
            times[name].append((time.perf_counter() - t0) * 1000)
    return times


def _run(url: str, lines: int, rounds: int) -> tuple[float, dict[str, list[float]]]:
    store = SqlStore(url)
    store.migrate()
    try:
        rate = _fill(store, lines)
        if store.dialect == "postgresql":
            # What autovacuum does minutes after a table grows this much: without the statistics
            # of the tsvector's words the planner cannot tell a common word from a rare one.
            with store.db.tx() as conn:
                conn.execute(sa.text("ANALYZE log_lines"))
        return rate, _searches(store, rounds)
    finally:
        store.close()


def log_search(lines: int = 200_000, rounds: int = 30) -> dict[str, Any]:
    """Median ms of a search over ``lines`` indexed lines (SQLite), PostgreSQL's in the note."""
    with tempfile.TemporaryDirectory() as tmp:
        sq_rate, sq = _run(f"sqlite:///{Path(tmp) / 'bench.db'}", lines, rounds)
    with postgres_db() as url:
        pg_rate, pg = _run(url, lines, rounds)
    every = [t for ts in sq.values() for t in ts]
    per_query = "; ".join(
        f"{name} {statistics.median(sq[name]):.1f}/{statistics.median(pg[name]):.1f}"
        for name, _, _ in QUERIES
    )
    return {
        "value": statistics.median(every),
        "unit": "ms",
        "p50": pct(every, 50),
        "p99": pct(every, 99),
        "n": len(every),
        "note": (
            f"{lines} lines; median ms sqlite/postgres: {per_query}; "
            f"postgres p50 {pct([t for ts in pg.values() for t in ts], 50):.1f} ms; "
            f"indexing {sq_rate:,.0f}/{pg_rate:,.0f} lines/s"
        ),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    r = log_search(args.lines, args.rounds)
    row = (r["value"], r["unit"], r["p50"], r["p99"], r["n"], r["note"])
    print(f"{'metric':<14}{'value':>10}  {'unit':<6}{'p50':>8}{'p99':>8}{'n':>6}  note")
    print("{:<14}{:>10.1f}  {:<6}{:>8.1f}{:>8.1f}{:>6}  {}".format("log_search", *row))
