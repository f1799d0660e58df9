"""The fleet: workers with their use, and pools and teams with their queues."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter

from trainyard.server.responses import AUTHED, errors
from trainyard.server.routes.deps import PlatformDep, UserDep
from trainyard.server.views import worker_json

router = APIRouter()


@router.get("/v1/workers", tags=["fleet"], responses=errors(*AUTHED))
async def list_workers(user: UserDep, p: PlatformDep) -> dict[str, Any]:
    workers = await p.db(p.store.list_workers)
    live = await p.db(p.store.live_attempts)
    used: dict[str, tuple[float, int, int, int]] = {}
    for a in live:
        c, m, g, n = used.get(a.worker_id, (0.0, 0, 0, 0))
        used[a.worker_id] = (c + a.cpu, m + a.memory, g + len(a.gpu_indices), n + 1)
    out = []
    for w in workers:
        c, m, g, n = used.get(w.id, (0.0, 0, 0, 0))
        beat = p.cache.last_heartbeat(w.id)  # fresher than the table's copy
        w = dataclasses.replace(w, last_heartbeat=beat) if beat is not None else w
        out.append(worker_json(w, (c, m, g), n, p._alive(w.id, w.registered_at)))
    return {"workers": out}


@router.get("/v1/queues", tags=["fleet"], responses=errors(*AUTHED))
async def queues(user: UserDep, p: PlatformDep) -> dict[str, Any]:
    pending = await p.db(p.store.pending_by_pool_team)
    running = await p.db(p.store.running_by_team)
    pools: dict[str, dict[str, Any]] = {}
    teams: dict[str, dict[str, Any]] = {}
    for pool, team, n in pending:
        key = pool or "default"
        pools.setdefault(key, {"pool": key, "pending": 0, "running": 0})["pending"] += n
        teams.setdefault(team, {"team": team, "pending": 0, "running": 0, "cpu": 0.0, "memory": 0, "gpu": 0})
        teams[team]["pending"] += n
    for team, n, cpu, mem, gpu in running:
        t = teams.setdefault(
            team, {"team": team, "pending": 0, "running": 0, "cpu": 0.0, "memory": 0, "gpu": 0}
        )
        t.update(running=n, cpu=cpu, memory=mem, gpu=gpu)
    for w in await p.db(p.store.list_workers, False):
        pools.setdefault(w.pool, {"pool": w.pool, "pending": 0, "running": 0})
    pool_of = {w.id: w.pool for w in await p.db(p.store.list_workers)}
    for a in await p.db(p.store.live_attempts):
        if a.worker_id in pool_of:
            pool = pool_of[a.worker_id]
            pools.setdefault(pool, {"pool": pool, "pending": 0, "running": 0})["running"] += 1
    if not user.is_admin:
        teams = {k: v for k, v in teams.items() if k == user.team}
    return {
        "pools": sorted(pools.values(), key=lambda x: x["pool"]),
        "teams": sorted(teams.values(), key=lambda x: x["team"]),
    }
