"""The admin API (``/admin/*``): keys, audit log and usage, behind one entry point.

``AdminAPI.handle(method, path, body, query, actor)`` takes the raw request (the body
as bytes, at most ``MAX_BODY``) and the authenticated caller, and returns
``(status, JSON-able data)`` or raises from ``gantry.errors``: ``ClientError`` (400,
``param`` names the field), ``NotFound`` (404: unknown admin path or key id) and
``MethodNotAllowed`` (405). Who may call it (role ``admin``) is decided before, by the
gateway's route table. Bodies and query strings are checked by the strict schemas in
``gantry.gateway.admin_schema``.
"""

from __future__ import annotations

import re
import time
from typing import Any

from gantry.config import GatewayConfig
from gantry.errors import ClientError, MethodNotAllowed, NotFound
from gantry.gateway.admin_schema import (
    CreateKey,
    ListKeysQuery,
    NoBody,
    NoQuery,
    UsageQuery,
    parse_body,
    parse_query,
)
from gantry.gateway.auth import Authenticator, Identity
from gantry.gateway.security import with_costs
from gantry.state.keys import KeyRecord, KeyStore
from gantry.state.ledger import UsageLedger, report

MAX_BODY = 64 * 1024
_KEYS = "/admin/keys"
_KEY_ID = re.compile(r"[0-9a-f]{1,32}")  # ids are 12 hex characters; anything else: 404
# path -> method -> operation; "{id}" stands for a key id
_OPS: dict[str, dict[str, str]] = {
    _KEYS: {"GET": "list", "POST": "create"},
    _KEYS + "/{id}/revoke": {"POST": "revoke"},
    _KEYS + "/{id}/rotate": {"POST": "rotate"},
    "/admin/audit": {"GET": "audit"},
    "/admin/usage": {"GET": "usage"},
}


def route(method: str, path: str) -> tuple[str, str]:
    """``(operation, key id or "")`` for a request, or NotFound / MethodNotAllowed."""
    key_id, template = "", path
    if path.startswith(_KEYS + "/"):
        key_id, _, action = path[len(_KEYS) + 1 :].partition("/")
        template = f"{_KEYS}/{{id}}/{action}" if _KEY_ID.fullmatch(key_id) else ""
    methods = _OPS.get(template)
    if methods is None:
        raise NotFound(f"Unknown admin path {path}.")
    op = methods.get(method)
    if op is None:
        raise MethodNotAllowed(f"Method {method} not allowed on {path}.")
    return op, key_id


class AdminAPI:
    def __init__(
        self,
        cfg: GatewayConfig,
        *,
        keys: KeyStore | None,
        auth: Authenticator,
        ledger: UsageLedger | None,
    ) -> None:
        self.cfg = cfg
        self.keys = keys  # None: no key table (security.auth off and no ledger)
        self.auth = auth
        self.ledger = ledger

    def __repr__(self) -> str:
        return f"AdminAPI(keys={self.keys is not None}, ledger={self.ledger is not None})"

    async def handle(
        self, method: str, path: str, body: bytes, query: str, actor: Identity
    ) -> tuple[int, Any]:
        op, key_id = route(method, path)
        who = actor.key_id[:128]  # the audit log's actor column
        if op == "usage":
            return 200, await self._usage(parse_query(UsageQuery, query))
        keys = self._keys()
        if op == "list":
            tenant = parse_query(ListKeysQuery, query).tenant
            return 200, {"data": [k.public() for k in await keys.list_keys(tenant)]}
        parse_query(NoQuery, query)
        if op == "audit":
            return 200, {"data": await keys.audit_log()}
        if op == "create":
            req = parse_body(CreateKey, body, {"tiers": self.cfg.tiers})
            return 201, await self._create(keys, req, who)
        parse_body(NoBody, body)
        await self._active(keys, key_id)
        if op == "revoke":
            if not await keys.revoke(key_id, actor=who):
                raise ClientError(f"Key {key_id} is already revoked.", param="key_id")
            self.auth.forget(key_id)
            return 200, {"id": key_id, "revoked": True}
        try:
            secret, rec = await keys.rotate(key_id, actor=who)
        except KeyError:  # revoked meanwhile
            raise ClientError(f"Key {key_id} is already revoked.", param="key_id") from None
        except ValueError as exc:  # a row stored before the store checked its values
            raise ClientError(f"Key {key_id} cannot be rotated: {exc}", param="key_id") from None
        self.auth.forget(key_id)
        await self.auth.refresh()
        return 200, {"key": secret, **rec.public(), "replaces": key_id}

    def _keys(self) -> KeyStore:
        if self.keys is None:
            raise ClientError("Key management needs security.auth: required.")
        return self.keys

    async def _active(self, keys: KeyStore, key_id: str) -> KeyRecord:
        rec = await keys.get(key_id)
        if rec is None:
            raise NotFound(f"No key {key_id}.", param="key_id")
        if rec.revoked_at is not None:
            raise ClientError(f"Key {key_id} is already revoked.", param="key_id")
        return rec

    async def _create(self, keys: KeyStore, req: CreateKey, who: str) -> dict[str, Any]:
        ttl = req.expires_in_s
        try:
            secret, rec = await keys.create(
                tenant=req.tenant,
                role=req.role,
                tier=req.tier,
                name=req.name,
                models=req.models,
                priority=req.priority,
                expires_at=time.time() + ttl if ttl is not None else None,
                actor=who,
            )
        except ValueError as exc:  # the store's own checks; the schema should catch all
            raise ClientError(str(exc)) from None
        await self.auth.refresh()
        return {"key": secret, **rec.public()}

    async def _usage(self, q: UsageQuery) -> dict[str, Any]:
        if self.ledger is None:
            raise ClientError("The usage ledger is off (ledger.enabled).")
        await self.ledger.flush()
        return {"data": with_costs(await report(self.ledger.engine, q.by), self.cfg)}
