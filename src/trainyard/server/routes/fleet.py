"""The fleet: workers with their use, pools and teams with their queues, and the pending demand per pool."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from trainyard.server.responses import AUTHED, errors
from trainyard.server.routes.deps import DemandDep, FleetDep, UserDep

router = APIRouter()


@router.get("/v1/workers", tags=["fleet"], responses=errors(*AUTHED))
async def list_workers(user: UserDep, fleet: FleetDep) -> dict[str, Any]:
    """Every worker: capacity, what its running jobs use, status, last heartbeat, and whether it
    counts as alive."""
    return {"workers": await fleet.workers_view()}


@router.get("/v1/queues", tags=["fleet"], responses=errors(*AUTHED))
async def queues(user: UserDep, fleet: FleetDep) -> dict[str, Any]:
    """Pools with their pending and running jobs; teams with theirs and the resources they use
    (a non-admin sees only their own team)."""
    return await fleet.queues_view(user)


@router.get("/v1/pools/demand", tags=["fleet"], responses=errors(*AUTHED))
async def pool_demand(user: UserDep, demand: DemandDep) -> dict[str, Any]:
    """Per pool and GPU type, the pending demand that fits no worker today (what an autoscaler could
    serve by adding workers): the pending jobs counted, their demand per resource (gpu: GPUs, cpu:
    cores, memory: bytes, over every replica), and the largest one's per-replica shape, with the
    time the leader computed it (null: not yet). Counted are the jobs the leader's last cycle left
    waiting for capacity or a reservation, or that no registered worker can fit; not those held by
    quota, those capacity is being freed for, array tasks over their array's parallelism, or those
    waiting for dependencies. A pool and type
    whose demand went away stays listed at 0 for an hour. Any user may read it, as it is the same
    figure as ``trainyard_pool_pending_demand``."""
    return await demand.view()
