"""The gateway: HTTP front, request pipeline, engines' dispatch, embedded default."""

from gantry.gateway.admin import AdminAPI
from gantry.gateway.embedded import EmbeddedEngines
from gantry.gateway.http import Exchange, HttpServer
from gantry.gateway.pipeline import Gateway
from gantry.gateway.server import Worker, serve

__all__ = ["AdminAPI", "EmbeddedEngines", "Exchange", "Gateway", "HttpServer", "Worker", "serve"]
