"""The admin API (keys, audit log, usage report)."""

from __future__ import annotations

from typing import Any

import orjson

from gantry.config import GatewayConfig
from gantry.errors import ClientError
from gantry.gateway.auth import Identity
from gantry.gateway.security import Security


class AdminAPI:
    def __init__(self, cfg: GatewayConfig, security: Security) -> None:
        self.cfg = cfg
        self.security = security

    async def handle(
        self, method: str, path: str, body: bytes, query: str, actor: Identity
    ) -> tuple[int, Any]:
        data: Any = {}
        if method == "POST" and body:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise ClientError("Request body is not valid JSON.", param="body") from None
            if not isinstance(data, dict):
                raise ClientError("Request body must be a JSON object.", param="body")
        return await self.security.admin(method, path, data, query, actor)
