"""The admin API for live routing changes: splits, aliases, tiers, engines, reload.

Every change builds a whole new configuration from the running one, validates it as a
config file would be validated, and applies it (``Gateway.reconfigure``): an invalid
change is refused whole with a 400 naming the problem, and nothing changes. Changes are
audited (``gantry_audit``) and apply to the process that received them; they last until
the next reload from the configuration file (``POST /admin/reload`` or SIGHUP), which
brings the file's content back. For a fleet, change the file (or the ConfigMap) and
reload every replica.

    GET    /admin/routing                   policies, splits, shadow, aliases, engines
    PUT    /admin/splits/{name}             {"targets": [...], "sticky": "key"}
    DELETE /admin/splits/{name}
    PUT    /admin/aliases/{name}            {"target": "model"}
    DELETE /admin/aliases/{name}
    PUT    /admin/tiers/{name}              {"rpm": 600, ...}
    POST   /admin/engines                   an engine spec: {"url": ..., "name": ...}
    DELETE /admin/engines/{name}            drained, then removed
    POST   /admin/engines/{name}/drain      no new requests (maintenance)
    POST   /admin/engines/{name}/undrain
    POST   /admin/reload                    re-read the configuration file
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from gantry.config import GatewayConfig, one_line_error
from gantry.engines.pool import EnginePool
from gantry.errors import ClientError, ConfigError, MethodNotAllowed, NotFound
from gantry.gateway.auth import Identity
from gantry.gateway.reconfigure import Plan
from gantry.state.keys import KeyStore

_ONE = {"splits": "split", "aliases": "alias", "tiers": "tier", "engines": "engine"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}")
PATHS = (
    "/admin/routing",
    "/admin/splits/",
    "/admin/aliases/",
    "/admin/tiers/",
    "/admin/engines",
    "/admin/reload",
)


class Reconfigurable(Protocol):
    cfg: GatewayConfig
    pool: EnginePool
    loader: Callable[[], GatewayConfig] | None

    async def reconfigure(self, new: GatewayConfig) -> Plan: ...


def handles(path: str) -> bool:
    return path == "/admin/routing" or path == "/admin/reload" or path.startswith(PATHS[1:5])


class RoutingAdmin:
    def __init__(self, gateway: Reconfigurable, keys: KeyStore | None) -> None:
        self.gw = gateway
        self.keys = keys

    async def handle(self, method: str, path: str, body: bytes, actor: Identity) -> tuple[int, Any]:
        kind, name, action = _parse(path)
        if kind == "routing":
            _method(method, "GET", path)
            return 200, self.state()
        if kind == "reload":
            _method(method, "POST", path)
            return 200, await self._reload(actor)
        if kind == "engines" and action:
            _method(method, "POST", path)
            return 200, await self._drain(name, action, actor)
        if kind == "engines" and not name:
            _method(method, "POST", path)
            spec = _json(body)
            return 201, await self._change(
                actor,
                "engine.add",
                str(spec.get("name") or ""),
                lambda d: d["engines"].append(spec),
            )
        allowed = {
            "splits": "PUT DELETE",
            "aliases": "PUT DELETE",
            "tiers": "PUT",
            "engines": "DELETE",
        }[kind]
        _method(method, allowed, path)
        if method == "DELETE":
            url = self._url_of(name) if kind == "engines" else None
            return 200, await self._change(
                actor, f"{_ONE[kind]}.delete", name, lambda d: _delete(d, kind, name, url)
            )
        value = _json(body)
        if kind == "aliases":
            target = value.get("target")
            if not isinstance(target, str) or set(value) != {"target"}:
                raise ClientError('The body must be {"target": "<model>"}.', param="target")
            value = target
        return 200, await self._change(
            actor, f"{_ONE[kind]}.put", name, lambda d: d[kind].__setitem__(name, value)
        )

    def state(self) -> dict[str, Any]:
        cfg, snap = self.gw.cfg, self.gw.pool.snapshot
        models = sorted(snap.by_model)
        return {
            "policy": cfg.routing.policy,
            "policies": {m: cfg.routing.policy_for(m) for m in models},
            "aliases": dict(cfg.aliases),
            "fallbacks": {k: list(v) for k, v in cfg.fallbacks.items()},
            "splits": {k: v.model_dump(mode="json") for k, v in cfg.splits.items()},
            "shadow": {k: v.model_dump(mode="json") for k, v in cfg.shadow.items()},
            "engines": [
                {
                    "name": e.name,
                    "models": list(e.models),
                    "group": e.group,
                    "healthy": e.healthy,
                    "draining": getattr(e, "draining", False),
                    "reason": e.reason,
                }
                for e in snap.engines
            ],
        }

    async def _change(
        self, actor: Identity, action: str, target: str, edit: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        if action != "engine.add" and not _NAME.fullmatch(target):
            raise ClientError(f"Not a valid name: {target!r}.", param="name")
        data = self.gw.cfg.model_dump(mode="json", by_alias=True)
        edit(data)
        try:
            new = GatewayConfig.model_validate(data)
        except ValidationError as exc:
            raise ClientError(one_line_error(exc)) from None
        plan = await self._apply(new)
        await self._audit(actor, action, target, data_of(plan))
        return {"changed": data_of(plan), "routing": self.state()}

    def _url_of(self, name: str) -> str | None:
        """The URL of a running engine (engines without a configured name are known by
        their place, engine-<i>, and matched in the configuration by URL)."""
        if name not in self.gw.pool.names():
            return None
        return self.gw.pool.spec_of(name).url

    async def _apply(self, new: GatewayConfig) -> Plan:
        try:
            return await self.gw.reconfigure(new)
        except ConfigError as exc:
            raise ClientError(str(exc)) from None

    async def _reload(self, actor: Identity) -> dict[str, Any]:
        if self.gw.loader is None:
            raise ClientError("This gateway has no configuration source to reload from.")
        try:
            new = self.gw.loader()
        except ConfigError as exc:
            raise ClientError(f"config reload refused: {exc}") from None
        plan = await self._apply(new)
        await self._audit(actor, "config.reload", "", data_of(plan))
        return {"changed": data_of(plan)}

    async def _drain(self, name: str, action: str, actor: Identity) -> dict[str, Any]:
        if action not in ("drain", "undrain"):
            raise NotFound(f"Unknown admin path /admin/engines/{name}/{action}.")
        if name not in self.gw.pool.names():
            raise NotFound(f"No engine {name}.", param="name")
        if action == "drain":
            self.gw.pool.drain(name)
        else:
            self.gw.pool.undrain(name)
        await self._audit(actor, f"engine.{action}", name, {})
        return {"engine": name, "draining": action == "drain"}

    async def _audit(self, actor: Identity, action: str, target: str, detail: Any) -> None:
        if self.keys is not None:
            await self.keys.record(
                actor.key_id[:128], action, target[:128], orjson.dumps(detail).decode()
            )


def data_of(plan: Plan) -> dict[str, Any]:
    return {
        "sections": list(plan.sections),
        "engines_added": [s.name or s.url for s in plan.added],
        "engines_removed": list(plan.removed),
    }


def _parse(path: str) -> tuple[str, str, str]:
    parts = path.removeprefix("/admin/").split("/")
    kind = parts[0]
    if kind not in ("routing", "reload", "splits", "aliases", "tiers", "engines"):
        raise NotFound(f"Unknown admin path {path}.")
    name = parts[1] if len(parts) > 1 else ""
    action = parts[2] if len(parts) > 2 else ""
    if len(parts) > 3 or (kind in ("routing", "reload") and name):
        raise NotFound(f"Unknown admin path {path}.")
    if kind in ("splits", "aliases", "tiers") and not name:
        raise NotFound(f"Unknown admin path {path}.")
    return kind, name, action


def _method(method: str, allowed: str, path: str) -> None:
    if method not in allowed.split():
        raise MethodNotAllowed(f"Method {method} not allowed on {path}.")


def _json(body: bytes) -> Any:
    try:
        value = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        raise ClientError("Request body is not valid JSON.", param="body") from None
    if not isinstance(value, dict):
        raise ClientError("Request body must be a JSON object.", param="body")
    return value


def _delete(data: dict[str, Any], kind: str, name: str, url: str | None = None) -> None:
    if kind == "engines":
        before = len(data["engines"])
        data["engines"] = [
            e
            for e in data["engines"]
            if e.get("name") != name and not (e.get("name") is None and e.get("url") == url)
        ]
        if len(data["engines"]) == before:
            raise NotFound(f"No engine {name} in the configuration.", param="name")
        return
    if name not in data[kind]:
        raise NotFound(f"No {_ONE[kind]} {name}.", param="name")
    del data[kind][name]
