"""What a heartbeat costs the control plane: CPU microseconds per heartbeat at 2,000 workers with
five running attempts each (10,000 running), on SQLite with the in-process cache and with Redis.

Each worker beats as the gRPC handler does it (``WorkerService.Heartbeat`` without the protobuf
framing): its credential resolved to a worker (``AuthService.worker``), then ``FleetService.heartbeat``
with the attempts it runs, the default interval's worth of beats at a time. A few rounds of every
worker beating once (a minute of beats, after a first round in which every worker looks); the figure
is the control plane's process CPU time per beat, averaged over the minute, and from it the share of
one core that 2,000 agents beating every 10 s take. No job changes meanwhile: a worker whose jobs
change reads its commands once more.

    .venv/bin/python bench/heartbeats.py [--workers 2000 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from leader_cycle import USER, clone_jobs

from trainyard.model.spec import JobSpec
from trainyard.server.platform import Platform
from trainyard.server.services.auth import WORKER_CACHE_TTL_S
from trainyard.server.services.fleet import Beat
from trainyard.server.settings import Settings

INTERVAL_S = 10.0
PER_WORKER = 5


@contextmanager
def _platform(redis_url: str | None) -> Iterator[Platform]:
    with tempfile.TemporaryDirectory() as tmp:
        p = Platform(Settings(home=Path(tmp), heartbeat_interval=INTERVAL_S, redis_url=redis_url))
        p.store.migrate()
        p.replica.lead()
        try:
            yield p
        finally:
            p.writes.close()
            p.close()


def _as_before(p: Platform) -> None:
    """The heartbeat path as it was: the credential cache's 5 s TTL (under the 10 s interval: a miss
    every beat) and the worker's commands read from the store on every beat."""
    p.auth.worker_ttl = WORKER_CACHE_TTL_S
    p.fleet.commands.watch_due = lambda now: False  # type: ignore[method-assign]
    p.fleet.commands.must_look = lambda worker_id, running, now: True  # type: ignore[method-assign]


async def _measure(p: Platform, n_workers: int, rounds: int) -> list[float]:
    creds: list[tuple[str, str]] = []
    for i in range(n_workers):
        w, credential = await p.fleet.register(
            cached_uris=None,
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
        creds.append((w.id, credential))
    template = p.store.submit(
        USER, JobSpec.model_validate({"command": ["true"], "resources": {"cpu": 1}})
    ).job
    held = clone_jobs(p.store, template.id, [wid for wid, _ in creds for _ in range(PER_WORKER)], 0)
    running: dict[str, list[tuple[str, int, str]]] = {}
    for job_id, wid, token in held:
        running.setdefault(wid, []).append((job_id, 1, token))
    # Rounds run back to back, faster than agents beat: the credential cache's and the command
    # gate's clocks move one interval per round, as they would between two beats of one agent.
    virtual = [time.monotonic()]
    p.auth.monotonic = lambda: virtual[0]
    p.fleet.monotonic = lambda: virtual[0]
    per_beat = []
    for _ in range(rounds + 1):
        virtual[0] += INTERVAL_S
        c0 = time.process_time()
        for wid, credential in creds:
            worker = await p.auth.worker(credential)
            assert worker is not None and worker.id == wid
            await p.fleet.heartbeat(worker, Beat(running=running[wid]))
        per_beat.append((time.process_time() - c0) / n_workers * 1e6)
    return per_beat[1:]  # the first round is every worker's first look


def heartbeat_cost(n_workers: int = 2000, rounds: int = 6) -> dict[str, Any]:
    from common import redis_server

    out: dict[str, float] = {}
    before: dict[str, float] = {}
    for name in ("sqlite", "redis"):
        for was in (True, False):
            with redis_server() if name == "redis" else nullcontext(None) as rurl, _platform(rurl) as p:
                if was:
                    _as_before(p)
                (before if was else out)[name] = statistics.median(
                    asyncio.run(_measure(p, n_workers, rounds))
                )
    # Agents beating every INTERVAL_S: beats per second times CPU per beat, as a share of one core.
    share = {k: v * n_workers / INTERVAL_S / 1e6 for k, v in out.items()}
    return {
        "value": out["sqlite"],
        "unit": "us",
        "n": n_workers,
        "us_per_beat": out,
        "us_per_beat_before": before,
        "core_share": share,
        "note": f"CPU per beat: SQLite {out['sqlite']:.0f} us (was {before['sqlite']:.0f}), Redis "
        f"{out['redis']:.0f} us (was {before['redis']:.0f}); {n_workers} agents every {INTERVAL_S:.0f} s: "
        f"{100 * share['sqlite']:.1f}% / {100 * share['redis']:.1f}% of a core",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    r = heartbeat_cost(args.workers, args.rounds)
    print(f"{'metric':<30}{'value':>12}  {'unit':<8}note")
    print(f"{'heartbeat_cost':<30}{r['value']:>12.1f}  {r['unit']:<8}{r['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
