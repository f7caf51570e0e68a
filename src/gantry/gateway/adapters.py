"""LoRA adapters through the gateway: load on demand, and load or unload by admin.

Routing itself needs nothing new: an engine lists its loaded adapters in
``/v1/models``, so the pool snapshot maps each adapter to the engines that have it,
and the model's routing policy balances its requests among them. This module adds:

- ``ensure(model)``, run before a request is prepared: with ``adapters.on_demand``, an
  adapter registered in ``adapters.models`` that no healthy engine has loaded is loaded
  on the least-loaded healthy engine serving its base model (one load at a time per
  adapter; concurrent requests wait for it), then routed as usual.
- the admin API (role ``admin``, audited like every admin change)::

    GET  /admin/adapters          each engine's models (adapters included), the registry
    POST /admin/adapters/load     {"adapter", "path"?, "engines"?: [...]}
    POST /admin/adapters/unload   {"adapter", "engines"?: [...]}

  ``path`` defaults to the registry's; ``engines`` to every healthy engine of the
  base model (load) or every engine that has the adapter (unload). The engine's own
  refusal (vLLM's error JSON and status) is passed through.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gantry.config import AdaptersConfig
from gantry.engines.pool import EnginePool
from gantry.engines.transport import EngineRequest
from gantry.errors import ClientError, EngineRejected, MethodNotAllowed, NotFound
from gantry.gateway.admin_schema import parse_body
from gantry.gateway.auth import Identity
from gantry.routing.adapters import place_adapter
from gantry.state.keys import KeyStore

log = logging.getLogger("gantry.gateway")
PREFIX = "/admin/adapters"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class LoadAdapter(_Body):
    adapter: str = Field(min_length=1, max_length=200)
    path: str | None = Field(default=None, min_length=1, max_length=4096)
    engines: tuple[str, ...] | None = Field(default=None, max_length=1024)


class UnloadAdapter(_Body):
    adapter: str = Field(min_length=1, max_length=200)
    engines: tuple[str, ...] | None = Field(default=None, max_length=1024)


def handles(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class Adapters:
    def __init__(self, pool: EnginePool, cfg: AdaptersConfig, keys: KeyStore | None) -> None:
        self.pool = pool
        self.cfg = cfg
        self.keys = keys
        self._locks: dict[str, asyncio.Lock] = {}  # one per registered adapter (bounded)

    def __repr__(self) -> str:
        return f"Adapters(on_demand={self.cfg.on_demand}, registered={len(self._locks)})"

    async def ensure(self, model: str) -> None:
        """Load a registered adapter somewhere if no healthy engine has it (on demand)."""
        if not self.cfg.on_demand or self.pool.snapshot.healthy_for(model):
            return
        reg = self.cfg.lookup(model)
        if reg is None:
            return
        lock = self._locks.setdefault(model, asyncio.Lock())
        async with lock:
            snap = self.pool.snapshot
            if snap.healthy_for(model):
                return  # loaded while this request waited
            base, path = reg
            engine = place_adapter(snap.healthy_for(base), self.pool.inflight)
            if engine is None:
                return  # prepare() answers as for any model without an engine
            log.info("loading adapter %s on engine %s (on demand)", model, engine.name)
            await self._load_on(engine.name, model, path)

    async def handle(self, method: str, path: str, body: bytes, actor: Identity) -> tuple[int, Any]:
        action = path[len(PREFIX) :].strip("/")
        if action == "":
            if method != "GET":
                raise MethodNotAllowed(f"Method {method} not allowed on {path}.")
            return 200, self.state()
        if action not in ("load", "unload"):
            raise NotFound(f"Unknown admin path {path}.")
        if method != "POST":
            raise MethodNotAllowed(f"Method {method} not allowed on {path}.")
        if action == "load":
            req = parse_body(LoadAdapter, body)
            name, done = req.adapter, await self._load(req)
        else:
            ureq = parse_body(UnloadAdapter, body)
            name, done = ureq.adapter, await self._unload(ureq)
        await self._audit(actor, f"adapter.{action}", name, {"engines": done})
        return 200, {"adapter": name, action + "ed": done, "adapters": self.state()["engines"]}

    def state(self) -> dict[str, Any]:
        return {
            "engines": {e.name: list(e.models) for e in self.pool.snapshot.engines},
            "registry": {base: dict(a) for base, a in self.cfg.models.items()},
            "on_demand": self.cfg.on_demand,
        }

    async def _load(self, req: LoadAdapter) -> list[str]:
        reg = self.cfg.lookup(req.adapter)
        path = req.path or (reg[1] if reg else None)
        if path is None:
            raise ClientError(
                f"Adapter {req.adapter!r} is not in adapters.models: give its path.", param="path"
            )
        snap = self.pool.snapshot
        if req.engines is not None:
            targets = list(req.engines)
            self._known(targets)
        elif reg is not None:
            targets = [e.name for e in snap.healthy_for(reg[0])]
        else:
            raise ClientError(
                f"Adapter {req.adapter!r} is not in adapters.models: name the engines.",
                param="engines",
            )
        if not targets:
            raise ClientError(f"No healthy engine serves the base model of {req.adapter!r}.")
        for name in targets:
            await self._load_on(name, req.adapter, path)
        return targets

    async def _unload(self, req: UnloadAdapter) -> list[str]:
        snap = self.pool.snapshot
        if req.engines is not None:
            targets = list(req.engines)
            self._known(targets)
        else:
            targets = [e.name for e in snap.by_model.get(req.adapter, ())]
        if not targets:
            raise NotFound(f"No engine has adapter {req.adapter!r} loaded.", param="adapter")
        for name in targets:
            await self._call(name, "/v1/unload_lora_adapter", {"lora_name": req.adapter})
        return targets

    def _known(self, names: list[str]) -> None:
        known = set(self.pool.names())
        for n in names:
            if n not in known:
                raise NotFound(f"No engine {n!r}.", param="engines")

    async def _load_on(self, engine: str, name: str, path: str) -> None:
        await self._call(engine, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    async def _call(self, engine: str, path: str, payload: dict[str, str]) -> None:
        """POST to one engine, then re-read its models; a refusal is passed through."""
        t = self.cfg.load_timeout_s
        resp = await self.pool.transport(engine).send(
            EngineRequest(
                "POST",
                path,
                orjson.dumps(payload),
                {"content-type": "application/json"},
                connect_timeout=t,
                read_timeout=t,
            )
        )
        body = await asyncio.wait_for(resp.read(), t)
        try:
            if resp.status != 200 and not _already_loaded(resp.status, body):
                raise EngineRejected(resp.status, body, engine=engine)
        finally:
            await self.pool.rediscover(engine)

    async def _audit(self, actor: Identity, action: str, target: str, detail: Any) -> None:
        if self.keys is not None:
            await self.keys.record(
                actor.key_id[:128], action, target[:128], orjson.dumps(detail).decode()
            )


def _already_loaded(status: int, body: bytes) -> bool:
    """vLLM's 400 for an adapter that is loaded already: the wanted state, so success."""
    return status == 400 and b"has already been loaded" in body


__all__ = ["Adapters", "LoadAdapter", "UnloadAdapter", "handles"]
