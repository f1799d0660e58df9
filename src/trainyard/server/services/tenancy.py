"""Teams (fair-share weight, quotas), team secrets (sealed at rest), and the audit trail."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from trainyard.cache.tiers import Tier
from trainyard.model.records import AuditEntry, SecretInfo, Team, User
from trainyard.server.hub import Kick
from trainyard.server.secretbox import SecretBox, SecretUnreadable
from trainyard.server.services.blocking import off_loop
from trainyard.store import AuditTrail, Secrets, Tenancy

log = logging.getLogger("trainyard.server")


class TenancyStore(Tenancy, Secrets, AuditTrail, Protocol):
    """What the tenancy service needs of the store: teams, sealed secrets, the audit trail."""


class TenancyService:
    """What teams are, what secrets they hold, and who changed what."""

    def __init__(
        self, store: TenancyStore, secret_box: SecretBox, tiers: dict[str, Tier], kick_scheduler: Kick
    ) -> None:
        self.store = store
        self.secret_box = secret_box
        self.tiers = tiers
        self.kick_scheduler = kick_scheduler

    # ---- teams -----------------------------------------------------------------------------------
    async def list_teams(self) -> list[Team]:
        """Every team with its weight and quotas."""
        return await off_loop(self.store.list_teams)

    async def team_exists(self, name: str) -> bool:
        """Whether a team of that name exists."""
        return await off_loop(self.store.team_exists, name)

    async def set_team(self, name: str, changes: dict[str, Any]) -> Team:
        """Create or change a team; the scheduler applies it from its next cycle."""
        team = await off_loop(self.store.set_team, name, changes)
        self.kick_scheduler.set()  # a raised quota may let jobs run now
        return team

    # ---- secrets ---------------------------------------------------------------------------------
    async def put_secret(self, team: str, name: str, value: str, actor: str) -> SecretInfo:
        """Set a team secret; only its sealed form is stored."""
        sealed = self.secret_box.seal(team, name, value)
        return await off_loop(self.store.put_secret, team, name, sealed, actor)

    async def list_secrets(self, team: str) -> list[SecretInfo]:
        """A team's secrets: names and dates, never values."""
        return await off_loop(self.store.list_secrets, team)

    async def delete_secret(self, team: str, name: str) -> bool:
        """Delete a team secret; False when the team has none of that name."""
        return await off_loop(self.store.delete_secret, team, name)

    def secret_values(self, team: str, names: list[str]) -> dict[str, str]:
        """Decrypted values of a team's secrets (blocking); a secret deleted since the submit is left
        unset (the job sees it missing, as it would a revoked credential)."""
        sealed = self.store.secret_ciphertexts(team, names)
        out = {}
        for name, ciphertext in sealed.items():
            try:
                out[name] = self.secret_box.open(team, name, ciphertext)
            except SecretUnreadable as e:
                log.error("%s; the job runs without it", e)
        return out

    # ---- audit trail -----------------------------------------------------------------------------
    async def audit(
        self, actor: User, action: str, target: str, team: str | None, details: dict[str, Any]
    ) -> None:
        """Record who did what (after it succeeded): cancels, restarts, drains, team, user, token and
        secret changes."""
        await off_loop(self.store.audit, actor.name, action, target, team, details)

    async def list_audit(
        self, *, team: str | None, actor: str | None, action: str | None, limit: int
    ) -> list[AuditEntry]:
        """Audit entries, newest first, filtered."""
        return await off_loop(self.store.list_audit, team=team, actor=actor, action=action, limit=limit)
