"""The JSON bodies of the admin and tenancy routes as pydantic models.

A route reads its body with ``errors.json_object`` first (which refuses hostile JSON: deep nesting,
huge numbers, lone surrogates, NUL), then validates it here. Every field has a plain validator that
takes the raw JSON value and raises ``ValueError`` with the message the API documents, so a missing
field, a wrong type and a bad value all get the same field-level 422 detail; unknown fields are
ignored. ``validate`` turns a ``ValidationError`` into the API's ``ApiError``. (``TeamUpdate``, the
team body, lives in ``trainyard.model.team``: the CLI validates with it too.)

The models are not the routes' FastAPI body parameters: FastAPI would answer invalid bodies with
its own messages, and the OpenAPI document describes the bodies already (``responses.py``).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator

from trainyard.model.quantity import parse_duration
from trainyard.model.records import ROLES
from trainyard.model.team import TEAM_NAME
from trainyard.server.errors import ApiError, field_errors

M = TypeVar("M", bound=BaseModel)

MAX_SECRET_BYTES = 64 << 10
MAX_TOKEN_LIFETIME_S = 5 * 365 * 86400.0

__all__ = [
    "MAX_SECRET_BYTES",
    "MAX_TOKEN_LIFETIME_S",
    "DrainBody",
    "NewToken",
    "NewUser",
    "SecretBody",
    "validate",
]


def validate(
    model: type[M],
    body: dict[str, Any],
    message: str,
    *,
    first_only: bool = False,
    context: dict[str, Any] | None = None,
) -> M:
    """``body`` as ``model``, or a 422 ``invalid_request`` with ``message`` and the field details
    (``first_only``: the first problem only, for bodies whose routes have always named one)."""
    try:
        return model.model_validate(body, context=context)
    except ValidationError as e:
        details = field_errors(e)
        raise ApiError(422, "invalid_request", message, details[:1] if first_only else details) from None


class DrainBody(BaseModel):
    """``POST /v1/admin/workers/{worker}/drain``: how long the worker's jobs may run on."""

    deadline: float = Field(default=None, validate_default=True)
    """Seconds (a number or a duration such as ``10m``); absent, null or empty: at once."""

    @field_validator("deadline", mode="plain")
    @classmethod
    def _deadline(cls, v: Any) -> float:
        return parse_duration(v or 0)


class NewUser(BaseModel):
    """``POST /v1/admin/users``. Fields are checked in this order and every problem is reported;
    the rate tiers a ``tier`` may name come in the validation context (``tiers``)."""

    tier: str | None = None
    name: str = Field(default=None, validate_default=True)
    team: str = Field(default=None, validate_default=True)
    role: str = Field(default="user", validate_default=True)

    @field_validator("tier", mode="plain")
    @classmethod
    def _tier(cls, v: Any, info: ValidationInfo) -> str | None:
        tiers = (info.context or {}).get("tiers", ())
        if v is not None and (not isinstance(v, str) or v not in tiers):
            raise ValueError(f"unknown tier {v!r}; configured: {', '.join(sorted(tiers))}")
        return v

    @field_validator("name", mode="plain")
    @classmethod
    def _name(cls, v: Any) -> str:
        if not isinstance(v, str) or not TEAM_NAME.fullmatch(v):
            raise ValueError("must be a lowercase name (letters, digits, . _ -)")
        return v

    @field_validator("team", mode="plain")
    @classmethod
    def _team(cls, v: Any) -> str:
        if not isinstance(v, str) or not TEAM_NAME.fullmatch(v):
            raise ValueError("must be a lowercase team label")
        return v

    @field_validator("role", mode="plain")
    @classmethod
    def _role(cls, v: Any) -> str:
        if v not in ROLES:
            raise ValueError(f"must be one of {', '.join(ROLES)}")
        return str(v)


class NewToken(BaseModel):
    """``POST /v1/admin/tokens``; the first problem is reported."""

    user: str | None = None
    """Whose token (absent: the caller's own)."""
    description: str | None = None
    expires_in: float | None = None
    """Its lifetime in seconds (a number or a duration such as ``30d``); absent or null: never."""

    @field_validator("user", mode="plain")
    @classmethod
    def _user(cls, v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError("must be a user name")
        return v

    @field_validator("description", mode="plain")
    @classmethod
    def _description(cls, v: Any) -> str | None:
        if v is not None and (not isinstance(v, str) or len(v) > 200):
            raise ValueError("must be text of at most 200 characters")
        return v

    @field_validator("expires_in", mode="plain")
    @classmethod
    def _expires_in(cls, v: Any) -> float | None:
        if v is None:
            return None
        lifetime = parse_duration(v)
        if not 0 < lifetime <= MAX_TOKEN_LIFETIME_S:
            raise ValueError("must be more than 0 and at most 5 years")
        return lifetime


class SecretBody(BaseModel):
    """``PUT /v1/secrets/{name}``: the secret's value (text, never returned)."""

    value: str = Field(default=None, validate_default=True)

    @field_validator("value", mode="plain")
    @classmethod
    def _value(cls, v: Any) -> str:
        if not isinstance(v, str) or not v or len(v.encode()) > MAX_SECRET_BYTES or "\x00" in v:
            raise ValueError("must be non-empty text of at most 64 KiB, without NUL")
        return v
