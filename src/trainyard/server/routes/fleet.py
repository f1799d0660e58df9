"""The fleet: workers with their use, and pools and teams with their queues."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from trainyard.server.responses import AUTHED, errors
from trainyard.server.routes.deps import FleetDep, UserDep

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
