"""API keys: generated with a recognisable prefix, stored only as a SHA-256 hash.

Format: ``gk_<key id>_<secret>``. The id (public, 12 hex characters) finds the row;
the secret (32 URL-safe characters, 190 bits) is compared by hash in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass, replace

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gantry.state.sql import api_keys, audit

PREFIX = "gk_"
ROLES = ("admin", "user", "metrics")
# Bounds of the stored values (the column sizes in gantry.state.sql, and a sane range
# for admission priorities: tiers use -10..10).
MAX_TENANT = 128
MAX_NAME = 200
MAX_TIER = 64
PRIORITY_MIN, PRIORITY_MAX = -1000, 1000


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


def _check(
    tenant: object,
    role: object,
    tier: object,
    name: object,
    models: object,
    priority: object,
    expires_at: object,
) -> None:
    """Refuse ill-typed or out-of-range values before they reach the table: a bad value
    stored once (SQLite keeps "high" in an integer column) breaks every later request
    made with the key."""
    if not _text(tenant, MAX_TENANT):
        raise ValueError(f"tenant must be 1 to {MAX_TENANT} printable characters")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not _text(tier, MAX_TIER):
        raise ValueError(f"tier must be 1 to {MAX_TIER} printable characters")
    if not _text(name, MAX_NAME, empty=True):
        raise ValueError(f"name must be at most {MAX_NAME} printable characters")
    # The allow-list is stored comma-separated: a comma would split a name in two.
    if not isinstance(models, tuple) or not all(_text(m, 200) and "," not in m for m in models):
        raise ValueError("models must be a tuple of model names (printable, no commas)")
    if priority is not None and (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not PRIORITY_MIN <= priority <= PRIORITY_MAX
    ):
        raise ValueError(f"priority must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}")
    if expires_at is not None and (
        isinstance(expires_at, bool)
        or not isinstance(expires_at, int | float)
        or not math.isfinite(expires_at)
    ):
        raise ValueError("expires_at must be a finite number of seconds since the epoch")


def _text(v: object, limit: int, *, empty: bool = False) -> bool:
    """A string within ``limit`` characters and without control characters."""
    return (
        isinstance(v, str)
        and (empty or bool(v))
        and len(v) <= limit
        and not any(c < " " or c == "\x7f" for c in v)
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
        _check(tenant, role, tier, name, models, priority, expires_at)
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
