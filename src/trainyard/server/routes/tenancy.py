"""Tenancy: API tokens (expiry, revocation), the audit trail, and team secrets.

Roles rise ``viewer < user < team-admin < admin``. Anyone manages their own tokens; a team admin
also manages the tokens and secrets of their team and reads its audit trail; an admin, everything.
A secret's value goes in and never comes out: only a leased job receives it, as an environment
variable.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from trainyard.model.records import AuditEntry, SecretInfo, TokenInfo, User
from trainyard.model.spec import check_secret_name
from trainyard.model.team import TEAM_NAME
from trainyard.server.bodies import NewToken, SecretBody, validate
from trainyard.server.errors import ApiError, invalid, json_object
from trainyard.server.responses import AUTHED, SECRET_BODY, TOKEN_BODY, WITH_BODY, errors
from trainyard.server.routes.deps import AuthDep, TenancyDep, UserDep
from trainyard.server.services.auth import AuthService
from trainyard.server.views import iso
from trainyard.store import NotFound


def token_json(t: TokenInfo, now: float) -> dict[str, Any]:
    """A token's record as the API shows it, with its state (active, expired, revoked) at ``now``."""
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
    """An audit entry as the API shows it."""
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
    """A secret's record (never its value) as the API shows it."""
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


async def token_owner(auth: AuthService, actor: User, name: str) -> User:
    """The user ``name`` if ``actor`` may manage their tokens (themselves, or as their team's admin)."""
    owner = await auth.get_user(name)
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
async def create_token(request: Request, user: UserDep, auth: AuthDep, tenancy: TenancyDep) -> dict[str, Any]:
    """A new API token of yours (or, for a team admin, of a user of their team up to their own
    role), optionally expiring; the token itself is shown only here."""
    new = validate(NewToken, await json_object(request), "the token is not valid", first_only=True)
    name = new.user if new.user is not None else user.name
    expires_at = time.time() + new.expires_in if new.expires_in is not None else None
    owner = await token_owner(auth, user, name)
    if owner.rank > user.rank:
        raise ApiError(403, "forbidden", f"a {user.role} cannot create tokens for a {owner.role}")
    try:
        info, token = await auth.create_token(
            owner.name, expires_at=expires_at, description=new.description, created_by=user.name
        )
    except NotFound:  # removed meanwhile
        raise not_yours(user, name) from None
    await tenancy.audit(
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
    user: UserDep, auth: AuthDep, user_: Annotated[str | None, Query(alias="user")] = None
) -> dict[str, Any]:
    """Token records: an admin's of anyone (or of ``user``), a team admin's of their team, anyone
    else's only their own."""
    if user.is_admin:
        tokens = await auth.list_tokens(user=user_)
    elif user.role == "team-admin":
        tokens = await auth.list_tokens(user=user_, team=user.team)
    else:
        if user_ not in (None, user.name):
            raise ApiError(403, "forbidden", "you may list only your own tokens")
        tokens = await auth.list_tokens(user=user.name)
    now = time.time()
    return {"tokens": [token_json(t, now) for t in tokens]}


@router.delete(
    "/v1/admin/tokens/{token_id}",
    tags=["tokens"],
    summary="Revoke an API token (idempotent)",
    responses=errors(*AUTHED, 404),
)
async def revoke_token(token_id: str, user: UserDep, auth: AuthDep, tenancy: TenancyDep) -> dict[str, Any]:
    """Revoke one of your tokens (a team admin: of their team; an admin: any). It stops working at
    once on this replica and within seconds on the others."""
    listed = {t.id: t for t in await auth.list_tokens()}
    target = listed.get(token_id)
    if target is None or (target.user != user.name and not user.manages(target.team)):
        raise ApiError(404, "not_found", f"no token {token_id!r}")
    revoked = await auth.revoke_token(token_id)
    if revoked is None:
        raise ApiError(404, "not_found", f"no token {token_id!r}")
    await tenancy.audit(user, "token.revoke", token_id, revoked.team, {"user": revoked.user})
    return token_json(revoked, time.time())


@router.get(
    "/v1/admin/audit",
    tags=["admin"],
    summary="Who did what: newest first (team admins: their team)",
    responses=errors(*AUTHED, 403),
)
async def audit(
    user: UserDep,
    tenancy: TenancyDep,
    actor: str | None = None,
    action: str | None = None,
    team: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The audit trail, newest first, filtered by actor, action and team."""
    if not user.is_admin:
        if user.role != "team-admin":
            raise ApiError(403, "forbidden", "only admins and team admins read the audit trail")
        if team not in (None, user.team):
            raise ApiError(403, "forbidden", f"you may read only team {user.team!r}'s audit trail")
        team = user.team
    entries = await tenancy.list_audit(team=team, actor=actor, action=action, limit=limit)
    return {"entries": [audit_json(e) for e in entries]}


def secret_team(user: User, team: str | None, *, write: bool) -> str:
    """The team whose secrets the request is about (default: the caller's), if the caller may see
    them (``write``: and change them)."""
    team = team or user.team
    if not TEAM_NAME.fullmatch(team):
        raise invalid("invalid team", "team", f"{team!r} is not a team name")
    if team != user.team and not user.is_admin:
        raise ApiError(403, "forbidden", f"you may see only team {user.team!r}'s secrets")
    if write and not user.manages(team):
        raise ApiError(403, "forbidden", "only team admins and admins set or delete secrets")
    return team


def secret_name(name: str) -> str:
    """``name`` if it can name a secret (an environment variable name), else a 422."""
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
    name: str, request: Request, user: UserDep, tenancy: TenancyDep, team: str | None = None
) -> dict[str, Any]:
    """Set a secret of your team (team admins and admins); leased jobs that name it get it as an
    environment variable, masked in their logs."""
    team = secret_team(user, team, write=True)
    name = secret_name(name)
    value = validate(SecretBody, await json_object(request), "the secret is not valid").value
    info = await tenancy.put_secret(team, name, value, user.name)
    await tenancy.audit(user, "secret.set", name, team, {})
    return secret_json(info)


@router.get(
    "/v1/secrets",
    tags=["secrets"],
    summary="A team's secrets: names and dates, never values",
    responses=errors(*AUTHED, 403),
)
async def list_secrets(user: UserDep, tenancy: TenancyDep, team: str | None = None) -> dict[str, Any]:
    """Your team's secrets (an admin: any team's): names and dates, never values."""
    team = secret_team(user, team, write=False)
    return {"secrets": [secret_json(s) for s in await tenancy.list_secrets(team)]}


@router.delete(
    "/v1/secrets/{name}",
    status_code=204,
    tags=["secrets"],
    summary="Delete a team secret",
    responses=errors(*AUTHED, 403, 404),
)
async def delete_secret(name: str, user: UserDep, tenancy: TenancyDep, team: str | None = None) -> Response:
    """Delete a secret of your team (team admins and admins); jobs leased later run without it."""
    team = secret_team(user, team, write=True)
    name = secret_name(name)
    if not await tenancy.delete_secret(team, name):
        raise ApiError(404, "not_found", f"team {team!r} has no secret {name!r}")
    await tenancy.audit(user, "secret.delete", name, team, {})
    return Response(status_code=204)
