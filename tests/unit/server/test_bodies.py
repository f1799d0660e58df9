"""The admin bodies' models answer exactly what the routes always answered: every problem of a
new user in field order, the first problem of a new token, one message per field."""

from __future__ import annotations

from typing import Any

import pytest

from trainyard.server.bodies import DrainBody, NewToken, NewUser, SecretBody, validate
from trainyard.server.errors import ApiError

TIERS = {"tiers": {"gold": object(), "free": object()}}
NAME = "must be a lowercase name (letters, digits, . _ -)"
TEAM = "must be a lowercase team label"
ROLE = "must be one of viewer, user, team-admin, admin"


def details(model: Any, body: Any, **kw: Any) -> list[dict[str, str]]:
    with pytest.raises(ApiError) as e:
        validate(model, body, "not valid", **kw)
    assert (e.value.status, e.value.code, e.value.message) == (422, "invalid_request", "not valid")
    return e.value.details


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, [("name", NAME), ("team", TEAM)]),
        ({"name": 1, "team": None}, [("name", NAME), ("team", TEAM)]),
        (
            {"name": "A", "team": "x y", "role": "boss", "tier": 5},
            [
                ("tier", "unknown tier 5; configured: free, gold"),
                ("name", NAME),
                ("team", TEAM),
                ("role", ROLE),
            ],
        ),
        ({"name": "ok", "team": "ok", "role": None}, [("role", ROLE)]),
        ({"name": "ok", "team": "ok", "role": ["user"]}, [("role", ROLE)]),
        (
            {"name": "ok", "team": "ok", "tier": "nope"},
            [("tier", "unknown tier 'nope'; configured: free, gold")],
        ),
        ({"name": "-ok", "team": "ok"}, [("name", NAME)]),
    ],
)
def test_new_user_problems(body: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    got = details(NewUser, body, context=TIERS)
    assert [(d["field"], d["message"]) for d in got] == expected


def test_new_user_defaults_and_extras() -> None:
    user = validate(NewUser, {"name": "ann", "team": "vision", "extra": 1}, "x", context=TIERS)
    assert (user.name, user.team, user.role, user.tier) == ("ann", "vision", "user", None)
    assert validate(NewUser, {"name": "a", "team": "b", "tier": "gold"}, "x", context=TIERS).tier == "gold"


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"user": None}, "user", "must be a user name"),
        ({"user": 5, "description": 5}, "user", "must be a user name"),  # the first problem only
        ({"description": "x" * 201}, "description", "must be text of at most 200 characters"),
        ({"description": 5, "expires_in": "x"}, "description", "must be text of at most 200 characters"),
        ({"expires_in": 0}, "expires_in", "must be more than 0 and at most 5 years"),
        ({"expires_in": "2000d"}, "expires_in", "must be more than 0 and at most 5 years"),
        ({"expires_in": -1}, "expires_in", "a duration must not be negative"),
        ({"expires_in": True}, "expires_in", "a duration must look like 30s, 10m or 2h"),
    ],
)
def test_new_token_first_problem(body: dict[str, Any], field: str, message: str) -> None:
    assert details(NewToken, body, first_only=True) == [{"field": field, "message": message}]


def test_new_token_defaults() -> None:
    token = validate(NewToken, {"expires_in": "30d"}, "x")
    assert token.user is None and token.description is None and token.expires_in == 30 * 86400
    assert validate(NewToken, {"expires_in": None}, "x").expires_in is None


@pytest.mark.parametrize("value", [None, "", 5, ["a"], "x" * (64 << 10) + "x", "a\x00b"])
def test_secret_value_problems(value: Any) -> None:
    body = {} if value is None else {"value": value}
    message = "must be non-empty text of at most 64 KiB, without NUL"
    assert details(SecretBody, body) == [{"field": "value", "message": message}]


@pytest.mark.parametrize(
    ("body", "seconds"),
    [({}, 0.0), ({"deadline": None}, 0.0), ({"deadline": ""}, 0.0), ({"deadline": "10m"}, 600.0)],
)
def test_drain_deadline(body: dict[str, Any], seconds: float) -> None:
    assert validate(DrainBody, body, "x").deadline == seconds


def test_drain_deadline_problem() -> None:
    got = details(DrainBody, {"deadline": "soon"})
    assert got == [{"field": "deadline", "message": "duration 'soon' must look like 30s, 10m, 2h or 1h30m"}]
