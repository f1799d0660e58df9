"""Who is calling: API tokens and SSO JWTs resolved to users, worker credentials resolved to
workers, each behind a short cache; and the users and API tokens themselves."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from trainyard.model.ids import hash_token
from trainyard.model.records import TokenInfo, User, Worker
from trainyard.server.services.blocking import off_loop
from trainyard.server.settings import Settings, worker_bootstrap_token
from trainyard.server.sso import JwtVerifier, looks_like_jwt
from trainyard.store import Authenticator, Tenancy

AUTH_CACHE_TTL_S = 5.0
"""How long a token's user is cached: a revoked token stops working within it on other replicas."""
WORKER_CACHE_TTL_S = 5.0
"""How long a worker credential's worker is cached, at least; with the heartbeat interval set, three
intervals (a TTL under one interval would miss on every beat: one store read per heartbeat)."""


class AuthStore(Authenticator, Tenancy, Protocol):
    """What the auth service needs of the store: tokens to users, users and their API tokens, and
    worker credentials to workers."""

    def worker_by_token(self, token: str) -> Worker | None:
        """The worker a credential belongs to."""
        ...


class AuthService:
    """Tokens and credentials to users and workers (cached), and the users' API tokens."""

    def __init__(
        self,
        store: AuthStore,
        settings: Settings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.monotonic = monotonic
        self.clock = clock
        self.bootstrap_token = worker_bootstrap_token(settings.home)
        self.sso = JwtVerifier(settings, self.provision_user) if settings.jwks_url else None
        self._users: dict[str, tuple[User, float]] = {}  # token -> (user, cache expiry)
        # worker credential -> (worker, cache expiry); a death or re-registration evicts at once
        self._workers: dict[str, tuple[Worker, float]] = {}
        # A status changed through another replica (drained, dead) reaches heartbeats here within
        # this: no later than the platform takes to declare a silent worker dead.
        self.worker_ttl = max(WORKER_CACHE_TTL_S, 3 * settings.heartbeat_interval)

    # ---- users -----------------------------------------------------------------------------------
    async def authenticate(self, token: str) -> User | None:
        """Token → user, cached for a few seconds: a revoked token stops working within the TTL."""
        now = self.monotonic()
        hit = self._users.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        if self.sso is not None and looks_like_jwt(token):
            found: tuple[User, float | None] | None = await self.sso.verify(token)
        else:
            found = await off_loop(self.store.token_user, token)
        if found is None:
            return None
        user, expires_at = found
        if len(self._users) > 10_000:
            self._users.clear()
        ttl = AUTH_CACHE_TTL_S if expires_at is None else min(AUTH_CACHE_TTL_S, expires_at - self.clock())
        self._users[token] = (user, now + ttl)  # an expiring token is not honoured past its expiry
        return user

    async def provision_user(self, name: str, team: str, role: str) -> User:
        """The user an SSO token names, created (or updated) on first sight."""
        return await off_loop(self.store.provision_user, name, team, role)

    def forget_user_tokens(self, name: str) -> None:
        """A token of ``name`` was revoked: this replica stops honouring it now (others within
        ``AUTH_CACHE_TTL_S``)."""
        for token, (user, _) in list(self._users.items()):
            if user.name == name:
                self._users.pop(token, None)

    async def get_user(self, name: str) -> User | None:
        """The user of that name, or None."""
        return await off_loop(self.store.get_user, name)

    async def create_user(self, name: str, team: str, role: str, tier: str | None) -> str:
        """Create (or replace) a user; returns their first API token."""
        return await off_loop(self.store.create_user, name, team, role, tier)

    # ---- API tokens ------------------------------------------------------------------------------
    async def create_token(
        self, owner: str, *, expires_at: float | None, description: str | None, created_by: str
    ) -> tuple[TokenInfo, str]:
        """A new API token of ``owner``: its record and the token itself (shown once)."""
        return await off_loop(
            self.store.create_token,
            owner,
            expires_at=expires_at,
            description=description,
            created_by=created_by,
        )

    async def list_tokens(self, *, user: str | None = None, team: str | None = None) -> list[TokenInfo]:
        """Token records (never the tokens), of one user or one team's users if given."""
        return await off_loop(self.store.list_tokens, user=user, team=team)

    async def revoke_token(self, token_id: str) -> TokenInfo | None:
        """Revoke a token (idempotent); this replica stops honouring it at once. None: no such token."""
        revoked = await off_loop(self.store.revoke_token, token_id)
        if revoked is not None:
            self.forget_user_tokens(revoked.user)
        return revoked

    # ---- workers ---------------------------------------------------------------------------------
    def is_bootstrap(self, token: str) -> bool:
        """Whether ``token`` is the bootstrap token agents register with (compared by hash)."""
        return bool(token) and hash_token(token) == hash_token(self.bootstrap_token)

    async def worker(self, credential: str) -> Worker | None:
        """The worker a credential belongs to, or None (cached for ``worker_ttl``)."""
        now = self.monotonic()
        hit = self._workers.get(credential)
        worker = hit[0] if hit is not None and hit[1] > now else None
        if worker is None and credential:
            worker = await off_loop(self.store.worker_by_token, credential)
            if worker is not None:
                self._workers[credential] = (worker, now + self.worker_ttl)
        return worker

    def remember_worker(self, credential: str, worker: Worker) -> None:
        """A worker just registered with this credential."""
        self._workers[credential] = (worker, self.monotonic() + self.worker_ttl)

    def forget_worker(self, worker_id: str) -> None:
        """Drop the worker's cached credentials: its status changed (dead, draining, re-registered)."""
        # Called from the reconciler's thread too: iterate over a copy, remove tolerantly.
        for token, (w, _) in list(self._workers.items()):
            if w.id == worker_id:
                self._workers.pop(token, None)
