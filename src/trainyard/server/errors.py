"""The API's error type, apart from the routes so that every route module can raise it."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from trainyard.server import safejson
from trainyard.server.safejson import printable


class ApiError(Exception):
    """Answered as ``{"error": {"code", "message", "details"}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers


async def json_object(
    request: Request,
    *,
    empty_ok: bool = False,
    code: str = "invalid_request",
    what: str = "a JSON object",
) -> dict[str, Any]:
    """The request body as a JSON object, or the documented 400/422.

    Every route that takes a JSON body reads it here, through ``safejson.loads``: hostile JSON
    (nesting 100,000 deep, a 5,000-digit number, NaN, a lone surrogate or NUL in any string) is
    answered 400 (not JSON we parse) or 422 naming the field (``code``), never a 500, so nothing
    downstream (database, protobuf, audit trail) ever sees such a value."""
    return json_object_of(await request.body(), empty_ok=empty_ok, code=code, what=what)


def json_object_of(
    raw: bytes,
    *,
    empty_ok: bool = False,
    code: str = "invalid_request",
    what: str = "a JSON object",
) -> dict[str, Any]:
    """``json_object`` of a body already read."""
    if not raw and empty_ok:
        return {}
    try:
        body = safejson.loads(raw)
    except safejson.JsonRejected as e:
        if e.problems:
            raise ApiError(422, code, e.message, e.problems) from None
        raise ApiError(400, "invalid_json", e.message) from None
    if not isinstance(body, dict):
        raise ApiError(422, code, f"the body must be {what}")
    return body


def invalid(message: str, field: str, detail: str) -> ApiError:
    """A 422 ``invalid_request`` naming one field and what is wrong with it."""
    return ApiError(422, "invalid_request", message, [{"field": field, "message": detail}])


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The documented error body, ``{"error": {"code", "message", "details"}}``, with ``status``."""
    # Messages and field names may echo hostile input (a lone surrogate): written so they encode.
    details = [{k: printable(v) for k, v in d.items()} for d in details or []]
    body = {"error": {"code": code, "message": printable(message), "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def field_errors(e: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[dict[str, str]]:
    """A pydantic validation error as the API's field-level details (dotted field, message)."""
    out = []
    for err in e.errors():
        loc = ".".join(str(p) for p in (*prefix, *err["loc"])) or "body"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append({"field": loc, "message": msg})
    return out
