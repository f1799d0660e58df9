"""How the REST app answers each exception: always the documented error body, never a stack trace."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from trainyard.server.errors import ApiError, error_response
from trainyard.server.services.jobs import RateLimited
from trainyard.store import Conflict, IdempotencyConflict, NotFound


async def api_error(_: Request, e: ApiError) -> JSONResponse:
    """An error a route raised on purpose: its status, code, message and details."""
    return error_response(e.status, e.code, e.message, e.details, e.headers)


async def not_found(_: Request, e: NotFound) -> JSONResponse:
    """The store found no such job (or the caller may not see it)."""
    return error_response(404, "not_found", f"job {e} not found")


async def idempotency_conflict(_: Request, e: IdempotencyConflict) -> JSONResponse:
    """An Idempotency-Key reused with another body."""
    return error_response(409, "idempotency_conflict", str(e))


async def conflict(_: Request, e: Conflict) -> JSONResponse:
    """A change the resource's state does not allow."""
    return error_response(409, "conflict", str(e))


async def forbidden(_: Request, e: PermissionError) -> JSONResponse:
    """The caller's role or team does not allow it."""
    return error_response(403, "forbidden", str(e))


async def rate_limited(_: Request, e: RateLimited) -> JSONResponse:
    """Over a rate limit: 429 with Retry-After in whole seconds."""
    return error_response(
        429, "rate_limited", str(e), headers={"Retry-After": str(max(1, round(e.retry_after)))}
    )


async def validation(_: Request, e: RequestValidationError) -> JSONResponse:
    """A query or path parameter FastAPI refused: field-level details."""
    details = [
        {"field": ".".join(str(x) for x in err["loc"][1:]) or str(err["loc"][0]), "message": err["msg"]}
        for err in e.errors()
    ]
    return error_response(422, "invalid_request", "the request is not valid", details)


async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
    """Routing's own errors (no such path, method not allowed) in the API's shape."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
    return error_response(e.status_code, code, str(e.detail))


async def store_error(_: Request, e: DBAPIError) -> JSONResponse:
    """The database unreachable: a retryable 503, not a server bug; other database errors go on."""
    # A connection the server dropped surfaces as OperationalError or InterfaceError, or as a
    # DBAPIError that says so. Answered here, not by the catch-all below: that one re-raises after
    # answering, and the server then drops the keep-alive connection under the client's next request.
    if isinstance(e, OperationalError | InterfaceError) or e.connection_invalidated:
        return error_response(
            503, "unavailable", "the state store is unavailable", headers={"Retry-After": "2"}
        )
    raise e


async def internal(_: Request, e: Exception) -> JSONResponse:
    """Anything else: a bare 500 that tells nothing about the server's insides."""
    return error_response(500, "internal", "internal error")


_HANDLERS: dict[type[Exception], Callable[[Request, Any], Awaitable[JSONResponse]]] = {
    ApiError: api_error,
    NotFound: not_found,
    IdempotencyConflict: idempotency_conflict,
    Conflict: conflict,
    PermissionError: forbidden,
    RateLimited: rate_limited,
    RequestValidationError: validation,
    StarletteHTTPException: http_error,
    DBAPIError: store_error,
    Exception: internal,
}


def add_error_handlers(app: FastAPI) -> None:
    """Install every handler above on ``app``."""
    for exc, handler in _HANDLERS.items():
        app.add_exception_handler(exc, handler)
