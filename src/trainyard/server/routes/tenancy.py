"""REST routes for tenancy: API tokens (expiry, revocation), the audit trail, and team secrets.

Roles rise ``viewer < user < team-admin < admin``. Anyone manages their own tokens; a team admin
also manages the tokens and secrets of their team and reads its audit trail; an admin, everything.
A secret's value goes in and never comes out: only a leased job receives it, as an environment
variable.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from trainyard.model.quantity import parse_duration
from trainyard.model.records import AuditEntry, SecretInfo, TokenInfo, User
from trainyard.model.spec import check_secret_name
from trainyard.model.team import TEAM_NAME
from trainyard.server.errors import ApiError, invalid, json_object
from trainyard.server.platform import Platform
from trainyard.server.responses import AUTHED, SECRET_BODY, TOKEN_BODY, WITH_BODY, errors
from trainyard.server.routes.deps import PlatformDep, UserDep
from trainyard.server.views import iso
from trainyard.store.sql import NotFound

MAX_SECRET_BYTES = 64 << 10
MAX_TOKEN_LIFETIME_S = 5 * 365 * 86400.0


def token_json(t: TokenInfo, now: float) -> dict[str, Any]:
    state = "revoked" if t.revoked_at else "expired" if t.expires_at and t.expires_at < now else "active"
    return {
        "id": t.id,
        "user": t.user,
        "team": t.team,
        "state": state,
        "description": t.description,
        "created_at": iso(t.created_at),
        "created_by": t.created_by,
        "expires_at": iso(t.expires_at),
        "revoked_at": iso(t.revoked_at),
    }


def audit_json(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "team": e.team,
        "details": e.details,
    }


def secret_json(s: SecretInfo) -> dict[str, Any]:
    return {
        "name": s.name,
        "team": s.team,
        "created_at": iso(s.created_at),
        "updated_at": iso(s.updated_at),
        "updated_by": s.updated_by,
    }


router = APIRouter()


def not_yours(actor: User, name: str) -> ApiError:
    """A user the caller may not manage, or none of that name: one answer for both unless the
    caller is an admin (who lists every user anyway) or named themselves, so names of other
    teams' users cannot be probed. (A team admin learns only that the name is not one of their
    team's.)"""
    if actor.is_admin or name == actor.name:
        return invalid("unknown user", "user", f"no user {name!r}")
    return ApiError(403, "forbidden", "you may manage only your own tokens (team admins: their team's)")


async def token_owner(p: Platform, actor: User, name: str) -> User:
    owner = await p.db(p.store.get_user, name)
    if owner is None or (owner.name != actor.name and not actor.manages(owner.team)):
        raise not_yours(actor, name)
    return owner


@router.post(
    "/v1/admin/tokens",
    status_code=201,
    tags=["tokens"],
    summary="Create an API token",
    responses=errors(*WITH_BODY, 403),
    openapi_extra=TOKEN_BODY,
)
async def create_token(request: Request, user: UserDep, p: PlatformDep) -> dict[str, Any]:
    body = await json_object(request)
    name = body.get("user", user.name)
    if not isinstance(name, str):
        raise invalid("the token is not valid", "user", "must be a user name")
    description = body.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > 200):
        raise invalid("the token is not valid", "description", "must be text of at most 200 characters")
    expires_at = None
    if body.get("expires_in") is not None:
        try:
            lifetime = parse_duration(body["expires_in"])
        except ValueError as e:
            raise invalid("the token is not valid", "expires_in", str(e)) from None
        if not 0 < lifetime <= MAX_TOKEN_LIFETIME_S:
            raise invalid("the token is not valid", "expires_in", "must be more than 0 and at most 5 years")
        expires_at = time.time() + lifetime
    owner = await token_owner(p, user, name)
    if owner.rank > user.rank:
        raise ApiError(403, "forbidden", f"a {user.role} cannot create tokens for a {owner.role}")
    try:
        info, token = await p.db(
            p.store.create_token,
            owner.name,
            expires_at=expires_at,
            description=description,
            created_by=user.name,
        )
    except NotFound:  # removed meanwhile
        raise not_yours(user, name) from None
    await p.audit(
        user, "token.create", info.id, owner.team, {"user": owner.name, "expires_at": iso(expires_at)}
    )
    return {**token_json(info, time.time()), "token": token}


@router.get(
    "/v1/admin/tokens",
    tags=["tokens"],
    summary="List API tokens (never the tokens themselves)",
    responses=errors(*AUTHED, 403),
)
async def list_tokens(
    user: UserDep, p: PlatformDep, user_: Annotated[str | None, Query(alias="user")] = None
) -> dict[str, Any]:
    if user.is_admin:
        tokens = await p.db(p.store.list_tokens, user=user_)
    elif user.role == "team-admin":
        tokens = await p.db(p.store.list_tokens, user=user_, team=user.team)
    else:
        if user_ not in (None, user.name):
            raise ApiError(403, "forbidden", "you may list only your own tokens")
        tokens = await p.db(p.store.list_tokens, user=user.name)
    now = time.time()
    return {"tokens": [token_json(t, now) for t in tokens]}


@router.delete(
    "/v1/admin/tokens/{token_id}",
    tags=["tokens"],
    summary="Revoke an API token (idempotent)",
    responses=errors(*AUTHED, 404),
)
async def revoke_token(token_id: str, user: UserDep, p: PlatformDep) -> dict[str, Any]:
    listed = {t.id: t for t in await p.db(p.store.list_tokens)}
    target = listed.get(token_id)
    if target is None or (target.user != user.name and not user.manages(target.team)):
        raise ApiError(404, "not_found", f"no token {token_id!r}")
    revoked = await p.db(p.store.revoke_token, token_id)
    if revoked is None:
        raise ApiError(404, "not_found", f"no token {token_id!r}")
    p.forget_user_tokens(revoked.user)
    await p.audit(user, "token.revoke", token_id, revoked.team, {"user": revoked.user})
    return token_json(revoked, time.time())


@router.get(
    "/v1/admin/audit",
    tags=["admin"],
    summary="Who did what: newest first (team admins: their team)",
    responses=errors(*AUTHED, 403),
)
async def audit(
    user: UserDep,
    p: PlatformDep,
    actor: str | None = None,
    action: str | None = None,
    team: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    if not user.is_admin:
        if user.role != "team-admin":
            raise ApiError(403, "forbidden", "only admins and team admins read the audit trail")
        if team not in (None, user.team):
            raise ApiError(403, "forbidden", f"you may read only team {user.team!r}'s audit trail")
        team = user.team
    entries = await p.db(p.store.list_audit, team=team, actor=actor, action=action, limit=limit)
    return {"entries": [audit_json(e) for e in entries]}


def secret_team(user: User, team: str | None, *, write: bool) -> str:
    team = team or user.team
    if not TEAM_NAME.fullmatch(team):
        raise invalid("invalid team", "team", f"{team!r} is not a team name")
    if team != user.team and not user.is_admin:
        raise ApiError(403, "forbidden", f"you may see only team {user.team!r}'s secrets")
    if write and not user.manages(team):
        raise ApiError(403, "forbidden", "only team admins and admins set or delete secrets")
    return team


def secret_name(name: str) -> str:
    try:
        return check_secret_name(name)
    except ValueError as e:
        raise invalid("invalid secret name", "name", str(e)) from None


@router.put(
    "/v1/secrets/{name}",
    tags=["secrets"],
    summary="Set a team secret (the value is never returned)",
    responses=errors(*WITH_BODY, 403),
    openapi_extra=SECRET_BODY,
)
async def put_secret(
    name: str, request: Request, user: UserDep, p: PlatformDep, team: str | None = None
) -> dict[str, Any]:
    team = secret_team(user, team, write=True)
    name = secret_name(name)
    value = (await json_object(request)).get("value")
    if not isinstance(value, str) or not value or len(value.encode()) > MAX_SECRET_BYTES or "\x00" in value:
        raise invalid(
            "the secret is not valid", "value", "must be non-empty text of at most 64 KiB, without NUL"
        )
    info = await p.db(p.store.put_secret, team, name, p.secret_box.seal(team, name, value), user.name)
    await p.audit(user, "secret.set", name, team, {})
    return secret_json(info)


@router.get(
    "/v1/secrets",
    tags=["secrets"],
    summary="A team's secrets: names and dates, never values",
    responses=errors(*AUTHED, 403),
)
async def list_secrets(user: UserDep, p: PlatformDep, team: str | None = None) -> dict[str, Any]:
    team = secret_team(user, team, write=False)
    return {"secrets": [secret_json(s) for s in await p.db(p.store.list_secrets, team)]}


@router.delete(
    "/v1/secrets/{name}",
    status_code=204,
    tags=["secrets"],
    summary="Delete a team secret",
    responses=errors(*AUTHED, 403, 404),
)
async def delete_secret(name: str, user: UserDep, p: PlatformDep, team: str | None = None) -> Response:
    team = secret_team(user, team, write=True)
    name = secret_name(name)
    if not await p.db(p.store.delete_secret, team, name):
        raise ApiError(404, "not_found", f"team {team!r} has no secret {name!r}")
    await p.audit(user, "secret.delete", name, team, {})
    return Response(status_code=204)
