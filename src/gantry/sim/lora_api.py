"""The simulator's LoRA endpoints and model cards (see ``gantry.sim.lora``).

``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path", "load_inplace"?}`` and
``POST /v1/unload_lora_adapter`` ``{"lora_name", "lora_int_id"?}`` answer plain text
on success and vLLM's error JSON otherwise; they are mounted only when
``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` was set at start-up (404 otherwise, as vLLM).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gantry.protocol import TEXT, Receive, Scope, Send, respond
from gantry.sim.lora import LoraMetrics, LoraRegistry
from gantry.sim.validate import schema_error

if TYPE_CHECKING:
    from gantry.sim.server import Handler, SimServer

log = logging.getLogger("gantry.sim")


class SimLoraAPI:
    """The adapters of one ``SimServer``: registry, endpoints, cards, metric."""

    def __init__(self, server: SimServer) -> None:
        self.server = server
        s = server.r.settings.lora
        self.registry = LoraRegistry(s, server.r.served)
        self.metrics = LoraMetrics(server.metrics.registry, s.max_loras) if s.enabled else None

    def routes(self) -> dict[str, dict[str, Handler]]:
        if not self.server.r.settings.lora.runtime_updating:
            return {}
        return {
            "/v1/load_lora_adapter": {"POST": self._load},
            "/v1/unload_lora_adapter": {"POST": self._unload},
        }

    def adapter_of(self, body: dict[str, Any]) -> str | None:
        """The adapter a generation request names, or None (the base model)."""
        model = body.get("model")
        return model if isinstance(model, str) and self.registry.get(model) else None

    def cards(self, created: int, permission: Any) -> list[dict[str, Any]]:
        return [
            {
                "id": a.name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": a.path,
                "parent": a.parent,
                "max_model_len": None,
                "permission": [permission()],
            }
            for a in self.registry.adapters()
        ]

    async def _load(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def run(scope: Scope, receive: Receive, send: Send) -> None:
            body = await self.server.json_body(scope, receive)
            name, path = _str(body, "lora_name"), _str(body, "lora_path")
            text = self.registry.load(name, path, load_inplace=body.get("load_inplace") is True)
            log.info("Loaded new LoRA adapter: name '%s', path '%s'", name, path)
            await respond(send, 200, text.encode(), TEXT)

        await self.server.guard(run, scope, receive, send)

    async def _unload(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def run(scope: Scope, receive: Receive, send: Send) -> None:
            body = await self.server.json_body(scope, receive)
            name = _str(body, "lora_name")
            int_id = body.get("lora_int_id")
            text = self.registry.unload(name, int_id if isinstance(int_id, int) else None)
            e = self.server.engine
            if e is not None and e.core.lora_slots is not None:
                e.core.lora_slots.drop(name)
            log.info("Removed LoRA adapter: name '%s'", name)
            await respond(send, 200, text.encode(), TEXT)

        await self.server.guard(run, scope, receive, send)


def _str(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise schema_error(key, "Input should be a valid string", value)
    return value


__all__ = ["SimLoraAPI"]
