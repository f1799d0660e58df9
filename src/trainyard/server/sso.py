"""Single sign-on: bearer tokens that are JWTs, verified against the identity provider's JWKS.

A deployment behind SSO sets TRAINYARD_JWKS_URL (and usually the audience and issuer). A JWT's
signature is checked with the JWKS key its ``kid`` names (the set is cached and fetched again when an
unknown ``kid`` shows up, as after a key rotation), then ``exp`` (required), ``nbf``, ``aud`` and
``iss``. Its claims name the user, team and role; the user row is created on first sight so that
ownership, quotas and the audit trail work as for any other user. Platform tokens keep working.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from trainyard.model.records import ROLES, User
from trainyard.model.team import TEAM_NAME
from trainyard.server.settings import Settings

log = logging.getLogger(__name__)

# Only public-key algorithms: a JWKS is public, so an HMAC "key" from it would let anyone sign.
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
JWKS_TTL_S = 300.0
# An unknown kid triggers a fetch at most this often: junk tokens must not hammer the provider.
JWKS_MIN_REFRESH_S = 10.0
LEEWAY_S = 30.0
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


def looks_like_jwt(token: str) -> bool:
    """Platform tokens (``ty_…``) have no dots; a compact JWS has exactly two."""
    return token.count(".") == 2


class Jwks:
    """The provider's keys by ``kid``, cached for ``JWKS_TTL_S``."""

    def __init__(self, url: str, fetch: Callable[[str], Awaitable[dict[str, Any]]] | None = None) -> None:
        self.url = url
        self._fetch = fetch or _fetch_json
        self._keys: dict[str | None, dict[str, Any]] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> dict[str, Any] | None:
        """The provider's key of that id, refreshed when stale or unknown (at most every
        ``JWKS_MIN_REFRESH_S`` for an unknown one)."""
        now = time.monotonic()
        if now - self._fetched_at > JWKS_TTL_S or (
            kid not in self._keys and now - self._fetched_at > JWKS_MIN_REFRESH_S
        ):
            await self._refresh(now)
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))  # a one-key set need not name it
        return self._keys.get(kid)

    async def _refresh(self, wanted_at: float) -> None:
        async with self._lock:
            if self._fetched_at >= wanted_at:
                return  # fetched by another request while this one waited for the lock
            try:
                data = await self._fetch(self.url)
            except (httpx.HTTPError, ValueError) as e:
                # Keep the keys we had: a provider blip must not log everybody out.
                log.warning("JWKS %s unavailable: %s", self.url, e)
                self._fetched_at = time.monotonic() - JWKS_TTL_S + JWKS_MIN_REFRESH_S
                return
            keys = data.get("keys") if isinstance(data, dict) else None
            self._keys = {
                k.get("kid"): k
                for k in keys or []
                if isinstance(k, dict) and k.get("kty") in ("RSA", "EC", "OKP")
            }
            self._fetched_at = time.monotonic()


async def _fetch_json(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(url)
        r.raise_for_status()
        data = r.json()
    if not isinstance(data, dict):
        raise ValueError("the JWKS is not a JSON object")
    return data


class JwtVerifier:
    """Bearer JWT → (User, expiry), or None when the token is not good."""

    def __init__(self, settings: Settings, provision: Callable[[str, str, str], Awaitable[User]]) -> None:
        assert settings.jwks_url
        self.jwks = Jwks(settings.jwks_url)
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self.user_claim = settings.jwt_user_claim
        self.team_claim = settings.jwt_team_claim
        self.role_claim = settings.jwt_role_claim
        self.provision = provision

    async def verify(self, token: str) -> tuple[User, float] | None:
        """The user a JWT vouches for, provisioned on first sight, and its expiry; None if refused."""
        claims = await self.claims(token)
        if claims is None:
            return None
        name, team, role = (
            claims.get(self.user_claim),
            claims.get(self.team_claim),
            claims.get(self.role_claim),
        )
        role = "user" if role is None else role
        if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
            log.info("JWT refused: claim %r is not a user name", self.user_claim)
            return None
        if not isinstance(team, str) or not TEAM_NAME.fullmatch(team):
            log.info("JWT refused for %s: claim %r is not a team name", name, self.team_claim)
            return None
        if role not in ROLES:
            log.info("JWT refused for %s: claim %r is not one of %s", name, self.role_claim, ROLES)
            return None
        user = await self.provision(name, team, role)
        return user, float(claims["exp"])

    async def claims(self, token: str) -> dict[str, Any] | None:
        """The token's claims if its signature, algorithm, issuer, audience and expiry check out."""
        # PyJWT (and cryptography under it) is loaded by deployments that use SSO, when a JWT comes.
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS or not (kid is None or isinstance(kid, str)):
            return None
        jwk = await self.jwks.key(kid)
        if jwk is None or jwk.get("alg") not in (None, alg):
            return None
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except (jwt.PyJWTError, json.JSONDecodeError, ValueError, TypeError) as e:
            log.info("JWT refused: %s", e)
            return None
        return claims
