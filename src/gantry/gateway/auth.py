"""Who is calling, and may they call this? Roles come from the route table
(``gantry.gateway.routes``).

Identities come from gantry API keys (``Authorization: Bearer gk_...``, looked up in a
cache of the key table that is refreshed every ``security.key_refresh_s``, so a
revocation reaches every replica within that time) or, when configured, from JWT bearer
tokens verified against a local JWKS file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from gantry.config import GatewayConfig
from gantry.errors import AuthenticationError, PermissionDenied
from gantry.state.keys import KeyRecord, KeyStore, matches, split_key

log = logging.getLogger("gantry.auth")

PUBLIC = frozenset({"*"})
ADMIN = frozenset({"admin"})
API = frozenset({"admin", "user"})
METRICS = frozenset({"admin", "metrics"})
ANY_ROLE = frozenset({"admin", "user", "metrics"})


@dataclass(frozen=True, slots=True)
class Identity:
    key_id: str
    tenant: str
    role: str
    tier: str
    models: tuple[str, ...] = ()  # empty: every model
    priority: int | None = None

    def may_use(self, model: str) -> bool:
        return not self.models or model in self.models


# Who calls when authentication is off, or on a public route. Never an admin.
ANONYMOUS = Identity("-", "-", "anonymous", "")


class Authenticator:
    def __init__(self, cfg: GatewayConfig, keys: KeyStore | None) -> None:
        self.cfg = cfg
        self.required = cfg.security.auth == "required"
        self.keys = keys
        # key id -> (record, its identity): identities are built once per refresh
        self._cache: dict[str, tuple[KeyRecord, Identity]] = {}
        self._task: asyncio.Task[None] | None = None
        self._jwks: Any = None
        if cfg.security.jwt.enabled:
            self._jwks = _load_jwks(cfg.security.jwt.jwks_file)

    async def start(self) -> None:
        if self.keys is None:
            return
        await self.refresh()
        if not self._cache and self.required:
            log.warning(
                "no API keys exist: every request except /health needs one. "
                "Create one with `gantry keys create --tenant NAME`."
            )
        self._task = asyncio.create_task(self._loop(), name="key-refresh")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> None:
        if self.keys is None:  # auth off: no key cache (the admin API may still make keys)
            return
        self._cache = {r.key_id: (r, _identity(r)) for r in await self.keys.list_keys()}

    def active_identity(self, key_id: str) -> Identity | None:
        """The identity of an API key that is still active (batch lines run as it)."""
        cached = self._cache.get(key_id)
        if cached is None or not cached[0].active(time.time()):
            return None
        return cached[1]

    def forget(self, key_id: str) -> None:
        """Revoked here: stop accepting it at once on this replica."""
        self._cache.pop(key_id, None)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.security.key_refresh_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("could not refresh API keys; keeping the last list")

    def check(self, roles: frozenset[str], authorization: str | None, what: str) -> Identity:
        """The caller's identity for a route open to ``roles``; AuthenticationError (401)
        or PermissionDenied (403) otherwise. Anonymous callers are never admins."""
        if roles is PUBLIC:
            return ANONYMOUS
        if not self.required:
            if roles is ADMIN:
                raise PermissionDenied(f"{what} needs API keys: set security.auth: required.")
            return ANONYMOUS
        ident = self.identify(authorization)
        if ident.role not in roles:
            raise PermissionDenied(f"A key with role '{ident.role}' may not call {what}.")
        return ident

    def identify(self, authorization: str | None) -> Identity:
        if not authorization:
            raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("The Authorization header must be 'Bearer <key>'.")
        parts = split_key(token)
        if parts is not None:
            cached = self._cache.get(parts[0])
            if cached is None or not matches(cached[0], parts[1]):
                raise AuthenticationError("Invalid API key.")
            if not cached[0].active(time.time()):
                raise AuthenticationError("This API key has been revoked or has expired.")
            return cached[1]
        if self._jwks is not None and token.count(".") == 2:
            return self._from_jwt(token)
        raise AuthenticationError("Invalid API key.")

    def _from_jwt(self, token: str) -> Identity:
        import jwt

        c = self.cfg.security.jwt
        try:
            header = jwt.get_unverified_header(token)
            key = self._jwks[header["kid"]].key if "kid" in header else None
            if key is None:
                raise AuthenticationError("JWT has no known key id ('kid').")
            claims = jwt.decode(
                token,
                key,
                algorithms=list(c.algorithms),
                audience=c.audience,
                issuer=c.issuer,
                options={"require": ["exp", "sub"]},
            )
        except (jwt.PyJWTError, KeyError) as exc:
            raise AuthenticationError(f"Invalid token: {exc}") from None
        role = str(claims.get(c.role_claim) or c.default_role)
        if role not in ANY_ROLE:
            raise AuthenticationError(f"Token role '{role}' is not a gantry role.")
        return Identity(
            f"jwt:{claims['sub']}",
            str(claims.get(c.tenant_claim) or claims["sub"]),
            role,
            str(claims.get(c.tier_claim) or c.default_tier),
        )


def _identity(rec: KeyRecord) -> Identity:
    return Identity(rec.key_id, rec.tenant, rec.role, rec.tier, rec.models, rec.priority)


def _load_jwks(path: str | None) -> Any:
    import jwt

    if not path:
        raise ValueError("security.jwt.jwks_file is required when JWT is enabled")
    try:
        with open(path) as f:
            keyset = jwt.PyJWKSet.from_json(f.read())
    except (OSError, jwt.PyJWTError) as exc:
        raise ValueError(f"cannot load JWKS {path}: {exc}") from exc
    return {k.key_id: k for k in keyset.keys}
