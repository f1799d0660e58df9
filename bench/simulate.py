"""Simulated day benchmark: `yard simulate --synthetic target` without the printing.

A day at our target scale (100k submissions, ~10k jobs running on ~2,700 workers with spot
reclaims) driven through the real scheduler, then through the FIFO baseline on the same workload.
The value is the scheduler run's wall time; the note carries what the run is for: fairness and
utilization against FIFO. Pure CPU: no database, no I/O.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from trainyard.scheduler.core import decide
from trainyard.scheduler.fifo import decide_fifo
from trainyard.scheduler.simulate import SimConfig, SimResult, simulate
from trainyard.scheduler.workload import synthetic


def _jain(r: SimResult) -> str:
    return f"{r.jain_index:.3f}" if r.jain_index is not None else "-"


def simulated_day(cycle_s: float = SimConfig().cycle_s, seed: int = 0) -> dict[str, Any]:
    t0 = time.perf_counter()
    workload = synthetic("target", seed=seed)
    gen_s = time.perf_counter() - t0
    # The workload's ~300k objects live for the whole run: keep the cyclic GC from rescanning them
    # after every scheduler cycle (the same thing `yard simulate` does).
    gc.collect()
    gc.freeze()
    config = SimConfig(cycle_s=cycle_s)
    t0, c0 = time.perf_counter(), time.process_time()
    sched = simulate(workload, decide, name="scheduler", config=config, timer=time.perf_counter)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    t1 = time.perf_counter()
    fifo = simulate(workload, decide_fifo, name="fifo", config=config)
    fifo_wall = time.perf_counter() - t1
    gc.unfreeze()
    s, f = sched.overall, fifo.overall
    note = (
        f"scheduler vs FIFO: GPU util {sched.gpu_utilization:.1%} vs {fifo.gpu_utilization:.1%}, "
        f"Jain {_jain(sched)} vs {_jain(fifo)}, "
        f"wait p50/p99 {s.wait_p50_s or 0:.0f}/{s.wait_p99_s or 0:.0f}s "
        f"vs {f.wait_p50_s or 0:.0f}/{f.wait_p99_s or 0:.0f}s; "
        f"{sched.cycles} cycles every >={cycle_s:g}s, {sched.policy_s:.0f}s in decide, cpu {cpu:.0f}s; "
        f"workload generation {gen_s:.1f}s, FIFO run {fifo_wall:.1f}s"
    )
    return {
        "value": wall,
        "unit": "s",
        "n": len(workload.jobs),
        "cpu_s": cpu,
        "policy_s": sched.policy_s,
        "cycles": sched.cycles,
        "cycle_s": cycle_s,
        "mean_running": sched.mean_running,
        "scheduler": {
            "gpu_utilization": sched.gpu_utilization,
            "jain_index": sched.jain_index,
            "wait_p50_s": sched.overall.wait_p50_s,
            "wait_p99_s": sched.overall.wait_p99_s,
            "preemptions": dict(sched.preemptions_by_reason),
            "gpu_hours_lost": sched.overall.gpu_hours_lost,
        },
        "fifo": {
            "gpu_utilization": fifo.gpu_utilization,
            "jain_index": fifo.jain_index,
            "wait_p50_s": fifo.overall.wait_p50_s,
            "wait_p99_s": fifo.overall.wait_p99_s,
            "wall_s": fifo_wall,
        },
        "note": note,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(simulated_day(), indent=2))
