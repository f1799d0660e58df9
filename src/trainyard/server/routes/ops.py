"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trainyard.server.errors import error_response
from trainyard.server.responses import errors
from trainyard.server.routes.deps import PlatformDep

router = APIRouter()


@router.get("/healthz", tags=["ops"])
async def healthz(p: PlatformDep) -> dict[str, Any]:
    # `leader`: whether this replica runs the scheduler, reconciler and relay right now.
    return {"status": "ok", "leader": p.is_leader}


@router.get("/readyz", tags=["ops"], response_model=None, responses=errors(503))
async def readyz(p: PlatformDep) -> Response:
    try:
        await p.db(p.store.ping)
    except Exception as e:
        return error_response(
            503,
            "unavailable",
            f"state store unavailable: {type(e).__name__}",
            headers={"Retry-After": "2"},
        )
    return JSONResponse({"status": "ready"})


@router.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
async def metrics(p: PlatformDep) -> Response:
    data = await asyncio.to_thread(generate_latest, p.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
