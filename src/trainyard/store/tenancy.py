"""Tenancy: teams and their quotas, users, API tokens, team secrets and the audit trail.

Owns the ``teams``, ``users``, ``api_tokens``, ``secrets`` and ``audit_log`` tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from trainyard.model.ids import TOKEN_ID_HEX, TOKEN_ID_PREFIX, hash_token, new_token, token_id
from trainyard.model.records import ROLES, AuditEntry, SecretInfo, Team, TokenInfo, User
from trainyard.store.db import Db
from trainyard.store.errors import NotFound
from trainyard.store.rows import team_record
from trainyard.store.schema import api_tokens, audit_log, secrets, teams, users

_TEAM_FIELDS = {"weight", "cpu_quota", "memory_quota", "gpu_quota", "gpu_type_quotas", "monthly_budget"}


class TenancyRepo:
    """Teams, users, tokens, secrets and the audit trail. Every public method is one transaction."""

    def __init__(self, db: Db) -> None:
        self._db = db
        self._known: set[str] = set()  # teams known to exist: spares a lookup per submission

    # ---- teams ---------------------------------------------------------------------------------
    def ensure_team(self, conn: sa.Connection, name: str, weight: float = 1.0) -> None:
        """Create the team in this transaction unless it exists."""
        if conn.execute(sa.select(teams.c.name).where(teams.c.name == name)).first() is None:
            # Another transaction may be creating it at this moment (concurrent submissions of a new
            # team's first jobs, or another replica): whichever commits first creates it, and neither fails.
            ins = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
            row = {"name": name, "weight": weight, "created_at": self._db.clock()}
            conn.execute(ins(teams).values(**row).on_conflict_do_nothing(index_elements=["name"]))

    def knows_team(self, name: str) -> bool:
        """Whether this process has seen the team exist (no database read)."""
        return name in self._known

    def remember_team(self, name: str) -> None:
        """Note that the team exists, so that ``knows_team`` spares the next lookup."""
        self._known.add(name)

    def set_team(self, name: str, changes: dict[str, Any]) -> Team:
        """Create or update a team. ``changes`` holds only what changes: weight, cpu_quota,
        memory_quota, gpu_quota, gpu_type_quotas (a quota of None removes that limit)."""
        unknown = set(changes) - _TEAM_FIELDS
        if unknown:
            raise ValueError(f"unknown team fields: {sorted(unknown)}")
        with self._db.tx() as conn:
            self.ensure_team(conn, name)
            if changes:
                conn.execute(teams.update().where(teams.c.name == name).values(**changes))
            row = conn.execute(sa.select(teams).where(teams.c.name == name)).one()
        self._known.add(name)
        return team_record(row)

    def list_teams(self) -> list[Team]:
        """Every team, by name."""
        with self._db.read() as conn:
            return [team_record(r) for r in conn.execute(sa.select(teams).order_by(teams.c.name))]

    def team_exists(self, name: str) -> bool:
        """Whether the team exists."""
        with self._db.read() as conn:
            return conn.execute(sa.select(teams.c.name).where(teams.c.name == name)).first() is not None

    # ---- users ---------------------------------------------------------------------------------
    def create_user(self, name: str, team: str, role: str = "user", tier: str | None = None) -> str:
        """Create a user (or add a token to an existing one) and return a new API token. ``tier``
        None keeps an existing user's tier."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        token = new_token("ty")
        now = self._db.clock()
        with self._db.tx() as conn:
            self.ensure_team(conn, team)
            existing = conn.execute(sa.select(users).where(users.c.name == name)).first()
            if existing is None:
                conn.execute(
                    users.insert().values(name=name, team=team, role=role, tier=tier, created_at=now)
                )
            elif (
                existing.team != team or existing.role != role or (tier is not None and existing.tier != tier)
            ):
                conn.execute(
                    users.update()
                    .where(users.c.name == name)
                    .values(team=team, role=role, tier=tier if tier is not None else existing.tier)
                )
            conn.execute(
                api_tokens.insert().values(token_hash=hash_token(token), user_name=name, created_at=now)
            )
        return token

    def provision_user(self, name: str, team: str, role: str) -> User:
        """A user vouched for by single sign-on: created on first sight (without an API token),
        its team and role kept in step with what the identity provider says; tier untouched."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        with self._db.tx() as conn:
            existing = conn.execute(sa.select(users).where(users.c.name == name)).first()
            if existing is None:
                self.ensure_team(conn, team)
                conn.execute(
                    users.insert().values(
                        name=name, team=team, role=role, tier=None, created_at=self._db.clock()
                    )
                )
                return User(name=name, team=team, role=role)
            if existing.team != team or existing.role != role:
                self.ensure_team(conn, team)
                conn.execute(users.update().where(users.c.name == name).values(team=team, role=role))
            return User(name=name, team=team, role=role, tier=existing.tier)

    def get_user(self, name: str) -> User | None:
        """The user of that name, if any."""
        with self._db.read() as conn:
            r = conn.execute(sa.select(users).where(users.c.name == name)).first()
        return None if r is None else User(name=r.name, team=r.team, role=r.role, tier=r.tier)

    # ---- tokens --------------------------------------------------------------------------------
    def authenticate(self, token: str) -> User | None:
        """The user a valid token belongs to (None: unknown, revoked or expired)."""
        found = self.token_user(token)
        return None if found is None else found[0]

    def token_user(self, token: str) -> tuple[User, float | None] | None:
        """The user a valid token belongs to, and when the token expires (None: never)."""
        now = self._db.clock()
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(
                    users.c.name,
                    users.c.team,
                    users.c.role,
                    users.c.tier,
                    api_tokens.c.expires_at,
                    api_tokens.c.revoked_at,
                )
                .select_from(api_tokens.join(users, users.c.name == api_tokens.c.user_name))
                .where(api_tokens.c.token_hash == hash_token(token))
            ).first()
        if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at < now):
            return None
        return User(name=row.name, team=row.team, role=row.role, tier=row.tier), row.expires_at

    def create_token(
        self, user: str, *, expires_at: float | None, description: str | None, created_by: str
    ) -> tuple[TokenInfo, str]:
        """A new API token for an existing user: its listing and the token (shown this once)."""
        token = new_token("ty")
        now = self._db.clock()
        digest = hash_token(token)
        with self._db.tx() as conn:
            owner = conn.execute(sa.select(users.c.team).where(users.c.name == user)).first()
            if owner is None:
                raise NotFound(user)
            conn.execute(
                api_tokens.insert().values(
                    token_hash=digest,
                    user_name=user,
                    created_at=now,
                    expires_at=expires_at,
                    description=description,
                    created_by=created_by,
                )
            )
        info = TokenInfo(token_id(digest), user, owner.team, now, expires_at, None, description, created_by)
        return info, token

    def list_tokens(self, *, user: str | None = None, team: str | None = None) -> list[TokenInfo]:
        """API tokens as listed (never the tokens themselves), oldest first."""
        q = (
            sa.select(api_tokens, users.c.team)
            .select_from(api_tokens.join(users, users.c.name == api_tokens.c.user_name))
            .order_by(api_tokens.c.created_at, api_tokens.c.token_hash)
        )
        if user is not None:
            q = q.where(api_tokens.c.user_name == user)
        if team is not None:
            q = q.where(users.c.team == team)
        with self._db.read() as conn:
            return [
                TokenInfo(
                    token_id(r.token_hash),
                    r.user_name,
                    r.team,
                    r.created_at,
                    r.expires_at,
                    r.revoked_at,
                    r.description,
                    r.created_by,
                )
                for r in conn.execute(q)
            ]

    def revoke_token(self, token_id_: str) -> TokenInfo | None:
        """Revoke by listed id (idempotent: revoking again keeps the first time). None: no such token."""
        prefix = token_id_.removeprefix(TOKEN_ID_PREFIX)
        if len(prefix) != TOKEN_ID_HEX or not all(c in "0123456789abcdef" for c in prefix):
            return None
        now = self._db.clock()
        with self._db.tx() as conn:
            rows = conn.execute(
                sa.select(api_tokens.c.token_hash).where(api_tokens.c.token_hash.startswith(prefix))
            ).all()
            if len(rows) != 1:
                return None  # none, or (astronomically unlikely) ambiguous: never revoke a guess
            conn.execute(
                api_tokens.update()
                .where(api_tokens.c.token_hash == rows[0].token_hash, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return next(t for t in self.list_tokens() if t.id == token_id_)

    # ---- audit ---------------------------------------------------------------------------------
    def audit(self, actor: str, action: str, target: str, team: str | None, details: dict[str, Any]) -> None:
        """Append an entry to the audit trail."""
        with self._db.tx() as conn:
            conn.execute(
                audit_log.insert().values(
                    at=self._db.clock(), actor=actor, action=action, target=target, team=team, details=details
                )
            )

    def list_audit(
        self,
        *,
        team: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Audit entries, newest first."""
        q = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if team is not None:
            q = q.where(audit_log.c.team == team)
        if actor is not None:
            q = q.where(audit_log.c.actor == actor)
        if action is not None:
            q = q.where(audit_log.c.action == action)
        with self._db.read() as conn:
            return [
                AuditEntry(r.id, r.at, r.actor, r.action, r.target, r.team, dict(r.details))
                for r in conn.execute(q)
            ]

    # ---- secrets -------------------------------------------------------------------------------
    def put_secret(self, team: str, name: str, ciphertext: str, actor: str) -> SecretInfo:
        """Create or replace a team secret (sealed by the caller)."""
        now = self._db.clock()
        with self._db.tx() as conn:
            self.ensure_team(conn, team)
            res = conn.execute(
                secrets.update()
                .where(secrets.c.team == team, secrets.c.name == name)
                .values(ciphertext=ciphertext, updated_at=now, updated_by=actor)
            )
            if res.rowcount == 0:
                conn.execute(
                    secrets.insert().values(
                        team=team,
                        name=name,
                        ciphertext=ciphertext,
                        created_at=now,
                        updated_at=now,
                        updated_by=actor,
                    )
                )
            r = conn.execute(sa.select(secrets).where(secrets.c.team == team, secrets.c.name == name)).one()
        return SecretInfo(r.team, r.name, r.created_at, r.updated_at, r.updated_by)

    def list_secrets(self, team: str) -> list[SecretInfo]:
        """A team's secrets (metadata only), by name."""
        with self._db.read() as conn:
            return [
                SecretInfo(r.team, r.name, r.created_at, r.updated_at, r.updated_by)
                for r in conn.execute(
                    sa.select(secrets).where(secrets.c.team == team).order_by(secrets.c.name)
                )
            ]

    def secret_ciphertexts(self, team: str, names: Sequence[str]) -> dict[str, str]:
        """The sealed values of those of a team's secrets that exist, by name."""
        if not names:
            return {}
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(secrets.c.name, secrets.c.ciphertext).where(
                    secrets.c.team == team, secrets.c.name.in_(list(names))
                )
            )
            return {r.name: r.ciphertext for r in rows}

    def delete_secret(self, team: str, name: str) -> bool:
        """Delete a team secret; False when there was none."""
        with self._db.tx() as conn:
            res = conn.execute(secrets.delete().where(secrets.c.team == team, secrets.c.name == name))
        return res.rowcount > 0
