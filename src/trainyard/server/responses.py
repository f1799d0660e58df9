"""OpenAPI documentation of the error responses and hand-parsed request bodies.

Routes read their JSON bodies by hand (to answer with field-level messages in our error shape), so
FastAPI cannot infer those bodies or the error statuses; this module states them, and the API
fuzz test (tests/integration/test_api_fuzz.py) holds the server to them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from trainyard.model.records import ROLES


class ErrorDetail(BaseModel):
    """One field-level problem."""

    field: str = Field(description="the offending field, dotted (e.g. resources.memory)")
    message: str


class ErrorInfo(BaseModel):
    """What went wrong: a machine-readable code, a message, and field-level details."""

    code: str = Field(description="machine-readable, e.g. not_found, invalid_spec, rate_limited")
    message: str
    details: list[ErrorDetail]


class Error(BaseModel):
    """Every non-2xx answer of the API has this body."""

    error: ErrorInfo


_WHY = {
    400: "the body is not valid JSON (or not UTF-8, or nested deeper than 64 levels)",
    401: "no or an invalid, expired or revoked bearer token",
    403: "the caller's role or team does not allow this",
    404: "no such resource (or not visible to the caller)",
    409: "the request conflicts with the resource's state",
    413: "the request body is over the size limit",
    422: "the request is not valid: field-level details",
    429: "over a rate limit or quota; see Retry-After",
    503: "the state store is unavailable; retry after Retry-After",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with its meaning and the Error body."""
    return {code: {"model": Error, "description": _WHY[code]} for code in codes}


# Statuses any authenticated route may answer: no valid token, a malformed query or path parameter,
# and the state store being down.
AUTHED = (401, 422, 503)
# ... and, with a JSON body read by the handler: malformed JSON and the body size limit.
WITH_BODY = (*AUTHED, 400, 413)

_NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"}


def json_body(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON-object request body the handler parses itself."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return {"requestBody": {"required": bool(required), "content": {"application/json": {"schema": schema}}}}


DRAIN_BODY = json_body({"deadline": {"type": ["string", "number", "null"], "description": "e.g. 10m"}})
TEAM_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TeamUpdate"}}},
    }
}
USER_BODY = json_body(
    {
        "name": _NAME,
        "team": _NAME,
        "role": {"type": "string", "enum": list(ROLES)},
        "tier": {"type": ["string", "null"]},
    },
    ("name", "team"),
)
TOKEN_BODY = json_body(
    {
        "user": {"type": "string", "description": "default: the caller"},
        "description": {"type": ["string", "null"], "maxLength": 200},
        "expires_in": {"type": ["string", "number", "null"], "description": "e.g. 30d; default: never"},
    }
)
SECRET_BODY = json_body({"value": {"type": "string", "minLength": 1}}, ("value",))
WORKDIR_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
    }
}

# follow=true answers a Server-Sent Events stream instead of the usual body.
SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
}
# Logs are plain text, or with follow=true and Accept: text/event-stream, Server-Sent Events.
LOG_TEXT: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "text/event-stream": {"schema": {"type": "string"}},
        }
    },
}
