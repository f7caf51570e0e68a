"""The supervisor's own HTTP endpoint: ``GET /health`` (JSON, each engine's state) and
``GET /metrics`` (Prometheus). ``/health`` answers 200 when every engine is ready and
503 otherwise, so a load balancer or Kubernetes probe can use it as it is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class StatusServer:
    """An explicit lifecycle around aiohttp's runner: ``start()``, ``stop()``."""

    def __init__(
        self,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        registry: CollectorRegistry,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._health = health
        self._registry = registry
        self.host, self.port = host, port
        app = web.Application()
        app.router.add_get("/health", self._get_health)
        app.router.add_get("/metrics", self._get_metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server  # the bound port when 0 was asked for
        sockets = getattr(server, "sockets", None) or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _get_health(self, _request: web.Request) -> web.Response:
        ready, body = self._health()
        return web.Response(
            body=orjson.dumps(body, option=orjson.OPT_INDENT_2),
            status=200 if ready else 503,
            content_type="application/json",
        )

    async def _get_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


__all__ = ["StatusServer"]
