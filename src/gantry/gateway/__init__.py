"""The gateway: ASGI app, admin API, dispatch, streaming relay, embedded default."""

from gantry.gateway.admin import AdminAPI
from gantry.gateway.app import GatewayApp
from gantry.gateway.embedded import EmbeddedEngines
from gantry.gateway.server import build_app, serve

__all__ = ["AdminAPI", "EmbeddedEngines", "GatewayApp", "build_app", "serve"]
