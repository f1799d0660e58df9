"""The public REST API (v1): ``create_app`` assembles the route modules of ``trainyard.server.routes``
with the middleware, the error handlers and the OpenAPI document; it holds no route itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp

from trainyard import __version__
from trainyard.model.spec import JobSpec
from trainyard.model.team import TeamUpdate
from trainyard.server.error_handlers import add_error_handlers
from trainyard.server.middleware import BodyLimit, CountRequests, FastJobReads, FastSubmits, RequestCounts
from trainyard.server.platform import Platform
from trainyard.server.routes import admin, artifacts, fleet, jobs, logs, objects, ops, tenancy, usage
from trainyard.server.settings import Settings
from trainyard.web import router as web_router

# In this order: it is the order of the OpenAPI document's paths.
ROUTERS = (
    jobs.router,
    logs.router,
    artifacts.router,
    fleet.router,
    admin.router,
    objects.router,
    ops.router,
    tenancy.router,
    usage.router,
    web_router,  # the web UI at / (static files under /ui/), last
)


def rest_app(p: Platform) -> ASGIApp:
    """What a control plane serves: ``create_app``'s app, with GET /v1/jobs/{id} and POST /v1/jobs
    answered in front of it when all is in order (``FastJobReads``, ``FastSubmits``)."""
    counts = RequestCounts(p.metrics)
    app = create_app(p, counts)
    reads = FastJobReads(app, authenticate=p.auth.authenticate, job_view=p.jobs.job_view, counts=counts)
    return FastSubmits(reads, p.auth.authenticate, p.jobs, counts, p.settings.max_body)


def create_app(p: Platform, counts: RequestCounts | None = None) -> FastAPI:
    """The REST app of one control plane, serving ``p``'s services."""
    app = FastAPI(
        title="Trainyard",
        version=__version__,
        description="Submit ML jobs, follow them live, fetch their artifacts.",
    )
    app.state.platform = p
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, limit_for=_body_limits(p.settings))
    app.add_middleware(CountRequests, counts=counts or RequestCounts(p.metrics))
    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def _body_limits(s: Settings) -> Callable[[str], int]:
    """The request body limit of each path: objects and workdir bundles are larger."""

    def limit_for(path: str) -> int:
        if path.startswith("/objects/"):
            return s.object_limit
        if path == "/v1/workdirs":
            return s.workdir_limit
        return s.max_body

    return limit_for


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The document, built once: the routes' own, plus the hand-parsed bodies' schemas (JobSpec,
    TeamUpdate) and the bearer security scheme."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(spec_schema.pop("$defs", {}))
    schemas["JobSpec"] = spec_schema
    schemas["TeamUpdate"] = TeamUpdate.model_json_schema(ref_template="#/components/schemas/{model}")
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    schema["security"] = [{"bearer": []}]
    app.openapi_schema = schema
    return schema
