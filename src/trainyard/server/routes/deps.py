"""FastAPI dependencies of the route modules: the caller and the platform's services.

Each is an ``async`` function (a plain one would run in a thread pool) reading the service off the
platform that ``create_app`` put in ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from trainyard.objects.base import ObjectStore
from trainyard.server.auth import UserDep
from trainyard.server.platform import Platform
from trainyard.server.services.auth import AuthService
from trainyard.server.services.demand import PoolDemands
from trainyard.server.services.files import FileService
from trainyard.server.services.fleet import FleetService
from trainyard.server.services.health import Health
from trainyard.server.services.jobs import JobService
from trainyard.server.services.logs import LogService
from trainyard.server.services.logsearch import LogSearch
from trainyard.server.services.retention import RetentionService
from trainyard.server.services.tenancy import TenancyService
from trainyard.server.settings import Settings

__all__ = [
    "AuthDep",
    "DemandDep",
    "FilesDep",
    "FleetDep",
    "HealthDep",
    "JobsDep",
    "LogSearchDep",
    "LogsDep",
    "ObjectsDep",
    "RetentionDep",
    "SettingsDep",
    "TenancyDep",
    "UserDep",
]


def _platform(request: Request) -> Platform:
    p: Platform = request.app.state.platform
    return p


async def jobs(request: Request) -> JobService:
    """The job service."""
    return _platform(request).jobs


async def logs(request: Request) -> LogService:
    """The log service."""
    return _platform(request).logs


async def log_search(request: Request) -> LogSearch:
    """Search of the indexed log lines."""
    return _platform(request).log_search


async def files(request: Request) -> FileService:
    """Artifacts and workdir bundles."""
    return _platform(request).files


async def fleet(request: Request) -> FleetService:
    """Workers and queues."""
    return _platform(request).fleet


async def demand(request: Request) -> PoolDemands:
    """The pending demand per pool and GPU type (the autoscaling signal)."""
    return _platform(request).demand


async def auth(request: Request) -> AuthService:
    """Users and API tokens."""
    return _platform(request).auth


async def tenancy(request: Request) -> TenancyService:
    """Teams, secrets and the audit trail."""
    return _platform(request).tenancy


async def health(request: Request) -> Health:
    """Leadership, readiness and metrics."""
    return _platform(request).health


async def objects(request: Request) -> ObjectStore:
    """The object store (served here only when it is the local one)."""
    return _platform(request).objects


async def settings(request: Request) -> Settings:
    """The control plane's settings."""
    return _platform(request).settings


async def retention(request: Request) -> RetentionService:
    """Retention: prunes and archived jobs."""
    return _platform(request).retention


JobsDep = Annotated[JobService, Depends(jobs)]
RetentionDep = Annotated[RetentionService, Depends(retention)]
LogsDep = Annotated[LogService, Depends(logs)]
LogSearchDep = Annotated[LogSearch, Depends(log_search)]
FilesDep = Annotated[FileService, Depends(files)]
FleetDep = Annotated[FleetService, Depends(fleet)]
DemandDep = Annotated[PoolDemands, Depends(demand)]
AuthDep = Annotated[AuthService, Depends(auth)]
TenancyDep = Annotated[TenancyService, Depends(tenancy)]
HealthDep = Annotated[Health, Depends(health)]
ObjectsDep = Annotated[ObjectStore, Depends(objects)]
SettingsDep = Annotated[Settings, Depends(settings)]
