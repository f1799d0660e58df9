"""Job array benchmark: one POST /v1/jobs of an array of 10,000 tasks on `yard up` (SQLite, the
embedded defaults) and on PostgreSQL, from the request to the 201 with the array's view (the parent
and every task row committed). The tasks ask for a pool no worker has, so none runs; each array is
cancelled before the next submission, and the platform is left a moment to relay the cancel's
10,000 events (neither is timed). A small array first warms the code paths up."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import httpx
from run import pct, platform, postgres_db

TASKS = 10_000
SETTLE_S = 3.0
BODY = {
    "command": ["python", "train.py", "--trial", "{index}"],
    "array": {"indices": f"0-{TASKS - 1}", "parallelism": 64},
    "pool": "bench-nowhere",
    "resources": {"cpu": 0.5, "memory": "256Mi"},
}


def _submit_times(client: httpx.Client, runs: int) -> list[float]:
    body = json.dumps(BODY).encode()
    headers = {"Content-Type": "application/json"}
    warm = client.post("/v1/jobs", json={**BODY, "array": {"indices": "0-99"}}, timeout=60)
    client.delete(f"/v1/jobs/{warm.json()['id']}", timeout=60)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = client.post("/v1/jobs", content=body, headers=headers, timeout=60)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 201, r.text
        assert r.json()["array"]["tasks"] == TASKS
        client.delete(f"/v1/jobs/{r.json()['id']}", timeout=60)
        time.sleep(SETTLE_S)
    return times


def _row(times: list[float]) -> dict[str, Any]:
    return {
        "value": statistics.median(times),
        "unit": "ms",
        "p50": pct(times, 50),
        "p99": pct(times, 99),
        "n": len(times),
    }


def array_submit(runs: int = 7) -> dict[str, Any]:
    """Median ms to accept one array of 10,000 tasks (SQLite), with PostgreSQL's as ``postgres``."""
    with platform() as c:
        sqlite = _row(_submit_times(c, runs))
    with postgres_db() as url, platform(url) as c:
        pg = _row(_submit_times(c, runs))
    note = f"{TASKS} tasks in one request; postgres p50 {pg['p50']:.0f} ms"
    return {**sqlite, "tasks": TASKS, "postgres": pg, "note": note}
