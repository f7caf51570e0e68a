"""The endpoints that are not relayed to engines: health, readiness, metrics, models,
the OpenAPI document and the admin API."""

from __future__ import annotations

import time
from typing import Any, Protocol

import orjson

from gantry import __version__
from gantry.config import GatewayConfig
from gantry.engines.pool import EnginePool
from gantry.gateway import adapters, admin_status
from gantry.gateway.accounting import Record
from gantry.gateway.adapters import Adapters
from gantry.gateway.admin import MAX_BODY
from gantry.gateway.admin_routing import RoutingAdmin, handles
from gantry.gateway.auth import Identity
from gantry.gateway.http import TEXT, Exchange
from gantry.gateway.openapi import openapi_document
from gantry.observability import GatewayMetrics


class AdminHandler(Protocol):
    async def handle(
        self, method: str, path: str, body: bytes, query: str, actor: Identity
    ) -> tuple[int, Any]: ...


class Endpoints:
    def __init__(
        self,
        cfg: GatewayConfig,
        pool: EnginePool,
        metrics: GatewayMetrics,
        admin: AdminHandler,
    ) -> None:
        self.cfg = cfg
        self.pool = pool
        self.metrics = metrics
        self.admin_api = admin
        self.routing_admin: RoutingAdmin | None = None
        self.status_page: admin_status.Observed | None = None
        self.adapters: Adapters | None = None
        self.draining = False
        self._openapi = orjson.dumps(openapi_document(__version__, batches=cfg.batches_on))

    async def health(self, x: Exchange, ident: Identity, rec: Record) -> None:
        rec.status = 200
        x.reply(200, b'{"status":"ok"}')

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready when not draining and every model has a healthy engine. Engines are
        named by their configured names only (never their URLs: this is public)."""
        reasons = []
        if self.draining:
            reasons.append("draining")
        snap = self.pool.snapshot
        wanted = {m for e in snap.engines for m in e.models} or {"(any)"}
        for model in sorted(wanted):
            if not snap.healthy_for(model):
                bad = [f"{e.name}: {e.reason or 'unhealthy'}" for e in snap.by_model.get(model, ())]
                reasons.append(f"model {model}: no healthy engine ({'; '.join(bad) or 'none'})")
        return not reasons, reasons

    async def readyz(self, x: Exchange, ident: Identity, rec: Record) -> None:
        ok, reasons = self.readiness()
        rec.status = 200 if ok else 503
        x.reply(rec.status, orjson.dumps({"ready": ok, "reasons": reasons}))

    async def metrics_page(self, x: Exchange, ident: Identity, rec: Record) -> None:
        rec.status = 200
        x.reply(200, self.metrics.render(), b"text/plain; version=0.0.4; charset=utf-8")

    async def openapi(self, x: Exchange, ident: Identity, rec: Record) -> None:
        rec.status = 200
        x.reply(200, self._openapi)

    async def models(self, x: Exchange, ident: Identity, rec: Record) -> None:
        """The served models and aliases the caller's key may use."""
        snap = self.pool.snapshot
        now = int(time.time())
        cards: list[dict[str, Any]] = []
        for model, engines in sorted(snap.by_model.items()):
            if not ident.may_use(model):
                continue
            lens = [e.max_model_len for e in engines if e.max_model_len]
            cards.append(_card(model, now, model, None, min(lens) if lens else None))
        for alias, target in sorted(self.cfg.aliases.items()):
            if target in snap.by_model and (ident.may_use(alias) or ident.may_use(target)):
                cards.append(_card(alias, now, target, target, None))
        for name, split in sorted(self.cfg.splits.items()):
            served = [t.model for t in split.targets if t.model in snap.by_model]
            if served and ident.may_use(name):
                cards.append(_card(name, now, name, None, None))
        rec.status = 200
        x.reply(200, orjson.dumps({"object": "list", "data": cards}))

    async def admin(self, x: Exchange, ident: Identity, rec: Record) -> None:
        body = b""
        if x.method in ("POST", "PUT"):
            body = await x.read_body(MAX_BODY, self.cfg.security.body_timeout_s)
        if self.status_page is not None and x.path == admin_status.PATH:
            status, data = await admin_status.handle(self.status_page, x.method, x.path)
        elif self.adapters is not None and adapters.handles(x.path):
            status, data = await self.adapters.handle(x.method, x.path, body, ident)
        elif self.routing_admin is not None and handles(x.path):
            status, data = await self.routing_admin.handle(x.method, x.path, body, ident)
        else:
            status, data = await self.admin_api.handle(x.method, x.path, body, x.query, ident)
        rec.status = status
        x.reply(status, orjson.dumps(data))


def _card(
    model: str, now: int, root: str, parent: str | None, max_len: int | None
) -> dict[str, Any]:
    card: dict[str, Any] = {
        "id": model,
        "object": "model",
        "created": now,
        "owned_by": "gantry",
        "root": root,
        "parent": parent,
    }
    if parent is None:
        card["max_model_len"] = max_len
    return card


__all__ = ["TEXT", "AdminHandler", "Endpoints"]
