"""FastAPI dependencies of the route modules: the caller and the platform's services."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from trainyard.server.auth import UserDep
from trainyard.server.platform import Platform

__all__ = ["PlatformDep", "UserDep"]


async def platform(request: Request) -> Platform:
    """The platform this app serves (async: a plain function would run in a thread pool)."""
    p: Platform = request.app.state.platform
    return p


PlatformDep = Annotated[Platform, Depends(platform)]
