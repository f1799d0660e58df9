"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from trainyard.server.errors import error_response
from trainyard.server.responses import errors
from trainyard.server.routes.deps import HealthDep

router = APIRouter()


@router.get("/healthz", tags=["ops"])
async def healthz(health: HealthDep) -> dict[str, Any]:
    """Liveness; ``leader``: whether this replica runs the scheduler, reconciler and relay now."""
    return {"status": "ok", "leader": health.is_leader}


@router.get("/readyz", tags=["ops"], response_model=None, responses=errors(503))
async def readyz(health: HealthDep) -> Response:
    """Readiness: 503 while the state store does not answer."""
    try:
        await health.check_store()
    except Exception as e:  # whatever the driver raises, the answer is "not ready"; it names the type
        return error_response(
            503,
            "unavailable",
            f"state store unavailable: {type(e).__name__}",
            headers={"Retry-After": "2"},
        )
    return JSONResponse({"status": "ready"})


@router.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
async def metrics(health: HealthDep) -> Response:
    """Prometheus metrics in the text exposition format."""
    return Response(await health.metrics_text(), media_type=CONTENT_TYPE_LATEST)
