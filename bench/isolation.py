"""Per-job start overhead of isolation: `true` jobs through the process executor directly.

    python bench/isolation.py [-n 200]

Runs N `true` jobs one after another in each mode and prints the median and p90 wall time from
``start()`` to ``wait()`` returning: off (plain process group), cgroup only (the shell that enters
the cgroup), and bwrap + cgroup (the sandbox, held at its start until it is in its cgroup).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from trainyard.worker.executors.base import LaunchSpec
from trainyard.worker.executors.process import ProcessExecutor
from trainyard.worker.isolation import Isolation, IsolationMode, IsolationSettings
from trainyard.worker.spool import LogSpool


def _spec(root: Path, i: int) -> LaunchSpec:
    d = root / "slots" / f"s{i % 8}"
    for sub in ("checkpoints", "artifacts", "work"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    return LaunchSpec(
        job_id=f"j{i}",
        attempt=1,
        command=("true",),
        env={"TRAINYARD_JOB_ID": f"j{i}", "TRAINYARD_ATTEMPT": "1"},
        cwd=d / "work",
        attempt_dir=d,
        checkpoint_dir=d / "checkpoints",
        artifact_dir=d / "artifacts",
        cpu=1.0,
        memory=256 << 20,
    )


async def _run(executor: ProcessExecutor, root: Path, n: int) -> list[float]:
    times: list[float] = []
    for i in range(n + 10):
        spec = _spec(root, i)
        spool = LogSpool(spec.attempt_dir / "log", 1 << 20)
        t0 = time.perf_counter()
        handle = await executor.start(spec, spool)
        status = await handle.wait()
        elapsed = time.perf_counter() - t0
        spool.close()
        if not status.ok:
            raise SystemExit(f"`true` failed: {status.describe()}: {spool.path.read_bytes()!r}")
        if i >= 10:  # warm-up: caches, the cgroup pool
            times.append(elapsed * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        root = Path(tmp)
        modes: list[tuple[str, ProcessExecutor]] = [("off", ProcessExecutor())]
        cg_only = Isolation(
            IsolationSettings(mode=IsolationMode.BEST_EFFORT, worker="bench-cg", bwrap="/nonexistent")
        )
        cg_only.sandbox_problem = "disabled for this measurement"
        modes.append(("cgroup only", ProcessExecutor(cg_only)))
        full = Isolation(
            IsolationSettings(mode=IsolationMode.REQUIRED, worker="bench", protected=(root / "slots",))
        )
        modes.append(("bwrap + cgroup", ProcessExecutor(full)))
        print(f"{'mode':<16} {'median ms':>10} {'p90 ms':>8} {'n':>5}")
        base = 0.0
        for name, ex in modes:
            times = asyncio.run(_run(ex, root, args.n))
            med = statistics.median(times)
            p90 = statistics.quantiles(times, n=10)[-1]
            base = base or med
            extra = f"  (+{med - base:.2f} ms)" if name != "off" else ""
            print(f"{name:<16} {med:>10.2f} {p90:>8.2f} {len(times):>5}{extra}")
        for iso in (cg_only, full):
            iso.sweep()
            for parent in iso.cgroups.bases.values() if iso.cgroups else ():
                parent.rmdir()


if __name__ == "__main__":
    main()
