"""Scheduler cycle benchmark: one `decide` over a synthetic snapshot (2,000 workers, a 60 %-loaded
fleet, several teams with weights and quotas, spot capacity, three regions), median of a few runs at
1,000, 10,000 and 50,000 pending jobs. Pure CPU: no database, no I/O."""

from __future__ import annotations

import statistics
import time
from typing import Any

from trainyard.scheduler.core import decide
from trainyard.scheduler.synthetic import snapshot


def _median_ms(n_pending: int, runs: int) -> float:
    snap = snapshot(n_pending, 2000)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        decide(snap)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def scheduler_cycle() -> dict[str, Any]:
    growth = {n: _median_ms(n, runs) for n, runs in ((1_000, 5), (10_000, 5), (50_000, 3))}
    note = ", ".join(f"{n // 1000}k: {ms:.0f} ms" for n, ms in growth.items())
    return {"value": growth[10_000], "unit": "ms", "n": 10_000, "growth_ms": growth, "note": note}
