"""API keys: generated with a recognisable prefix, stored only as a SHA-256 hash.

Format: ``gk_<key id>_<secret>``. The id (public, 12 hex characters) finds the row;
the secret (32 URL-safe characters, 190 bits) is compared by hash in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, replace

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gantry.state.sql import api_keys, audit

PREFIX = "gk_"
ROLES = ("admin", "user", "metrics")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    tenant: str
    name: str
    role: str
    tier: str
    models: tuple[str, ...]  # empty: every model
    priority: int | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    secret_hash: str = ""

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def status(self, now: float) -> str:
        """``active``, ``revoked`` or ``expired`` (revocation wins when both apply)."""
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.active(now) else "expired"

    def public(self) -> dict[str, object]:
        return {
            "id": self.key_id,
            "tenant": self.tenant,
            "name": self.name,
            "role": self.role,
            "tier": self.tier,
            "models": list(self.models),
            "priority": self.priority,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(token: str) -> tuple[str, str] | None:
    """``gk_<id>_<secret>`` -> (id, secret), or None when it is not one of ours."""
    if not token.startswith(PREFIX):
        return None
    key_id, sep, secret = token[len(PREFIX) :].partition("_")
    if not sep or not key_id or not secret:
        return None
    return key_id, secret


def matches(rec: KeyRecord, secret: str) -> bool:
    return hmac.compare_digest(rec.secret_hash, hash_secret(secret))


def _row(r: object) -> KeyRecord:
    m = r._mapping  # type: ignore[attr-defined]
    return KeyRecord(
        m["key_id"],
        m["tenant"],
        m["name"],
        m["role"],
        m["tier"],
        tuple(x for x in (m["models"] or "").split(",") if x),
        m["priority"],
        m["created_at"],
        m["expires_at"],
        m["revoked_at"],
        m["secret_hash"],
    )


class KeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(
        self,
        *,
        tenant: str,
        role: str = "user",
        tier: str = "standard",
        name: str = "",
        models: tuple[str, ...] = (),
        priority: int | None = None,
        expires_at: float | None = None,
        actor: str = "cli",
    ) -> tuple[str, KeyRecord]:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(24)
        rec = KeyRecord(
            key_id,
            tenant,
            name,
            role,
            tier,
            models,
            priority,
            time.time(),
            expires_at,
            None,
            hash_secret(secret),
        )
        async with self.engine.begin() as conn:
            await conn.execute(
                api_keys.insert().values(
                    key_id=key_id,
                    secret_hash=rec.secret_hash,
                    tenant=tenant,
                    name=name,
                    role=role,
                    tier=tier,
                    models=",".join(models),
                    priority=priority,
                    created_at=rec.created_at,
                    expires_at=expires_at,
                    revoked_at=None,
                )
            )
            await conn.execute(
                audit.insert().values(
                    ts=time.time(),
                    actor=actor,
                    action="key.create",
                    target=key_id,
                    detail=f"tenant={tenant} role={role} tier={tier}",
                )
            )
        return f"{PREFIX}{key_id}_{secret}", replace(rec, secret_hash="")

    async def list_keys(self, tenant: str | None = None) -> list[KeyRecord]:
        q = select(api_keys).order_by(api_keys.c.created_at)
        if tenant:
            q = q.where(api_keys.c.tenant == tenant)
        async with self.engine.connect() as conn:
            return [_row(r) for r in await conn.execute(q)]

    async def get(self, key_id: str) -> KeyRecord | None:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(api_keys).where(api_keys.c.key_id == key_id))).first()
        return _row(r) if r is not None else None

    async def revoke(self, key_id: str, actor: str = "cli") -> bool:
        async with self.engine.begin() as conn:
            res = await conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            if res.rowcount:
                await conn.execute(
                    audit.insert().values(
                        ts=time.time(), actor=actor, action="key.revoke", target=key_id, detail=""
                    )
                )
        return bool(res.rowcount)

    async def rotate(self, key_id: str, actor: str = "cli") -> tuple[str, KeyRecord]:
        """A new key with the same attributes; the old one is revoked."""
        old = await self.get(key_id)
        if old is None or old.revoked_at is not None:
            raise KeyError(key_id)
        secret, rec = await self.create(
            tenant=old.tenant,
            role=old.role,
            tier=old.tier,
            name=old.name,
            models=old.models,
            priority=old.priority,
            expires_at=old.expires_at,
            actor=actor,
        )
        await self.revoke(key_id, actor=actor)
        async with self.engine.begin() as conn:
            await conn.execute(
                audit.insert().values(
                    ts=time.time(),
                    actor=actor,
                    action="key.rotate",
                    target=key_id,
                    detail=f"new={rec.key_id}",
                )
            )
        return secret, rec

    async def audit_log(self, limit: int = 100) -> list[dict[str, object]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(audit).order_by(audit.c.id.desc()).limit(limit))
            return [{str(k): v for k, v in r._mapping.items()} for r in rows]

    async def record(self, actor: str, action: str, target: str = "", detail: str = "") -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                audit.insert().values(
                    ts=time.time(), actor=actor, action=action, target=target, detail=detail
                )
            )
