"""Who is calling: the bearer token of a REST request, resolved to a user."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from trainyard.model.records import User
from trainyard.server.errors import ApiError

if TYPE_CHECKING:
    from trainyard.server.platform import Platform


async def current_user(request: Request) -> User:
    """The caller, from the request's bearer token (401 without a valid one)."""
    # Read by hand rather than declared as a Header parameter: dependency resolution is a measurable
    # share of a small request. OpenAPI still documents it (the bearer security scheme).
    authorization = request.headers.get("authorization")
    if not authorization or not authorization.startswith("Bearer "):
        raise ApiError(401, "unauthenticated", "send Authorization: Bearer <token>")
    p: Platform = request.app.state.platform
    user = await p.auth.authenticate(authorization[len("Bearer ") :].strip())
    if user is None:
        raise ApiError(401, "unauthenticated", "the token is not valid")
    return user


UserDep = Annotated[User, Depends(current_user)]
