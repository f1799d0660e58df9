"""Scheduler cycle benchmark: one `decide` over a synthetic snapshot (2,000 workers, a 60 %-loaded
fleet, several teams with weights and quotas, spot capacity, three regions), median of a few runs at
1,000, 10,000 and 50,000 pending jobs. Pure CPU: no database, no I/O.

Each run is a cold cycle: the charge of the running replicas that ``decide`` keeps from one cycle
to the next (``trainyard.scheduler.charged``) is dropped first, so every run charges all of them, as
a cycle after a change of most of them does. The note also gives the warm cycle at 10,000 pending:
the same snapshot again, its running replicas charged already (nothing changed since)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from trainyard.scheduler.charged import forget
from trainyard.scheduler.core import decide
from trainyard.scheduler.synthetic import snapshot


def _median_ms(n_pending: int, runs: int, *, warm: bool = False) -> float:
    snap = snapshot(n_pending, 2000)
    times = []
    if warm:
        decide(snap)  # remembered,
        decide(snap)  # then kept
    for _ in range(runs):
        if not warm:
            forget()
        t0 = time.perf_counter()
        decide(snap)
        times.append((time.perf_counter() - t0) * 1000)
    forget()
    return statistics.median(times)


def scheduler_cycle() -> dict[str, Any]:
    growth = {n: _median_ms(n, runs) for n, runs in ((1_000, 5), (10_000, 5), (50_000, 3))}
    warm = _median_ms(10_000, 5, warm=True)
    note = ", ".join(f"{n // 1000}k: {ms:.0f} ms" for n, ms in growth.items())
    note += f"; 10k warm (running replicas charged already): {warm:.0f} ms"
    return {
        "value": growth[10_000],
        "unit": "ms",
        "n": 10_000,
        "growth_ms": growth,
        "warm_ms": warm,
        "note": note,
    }
