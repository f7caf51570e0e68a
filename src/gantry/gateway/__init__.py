"""The gateway: ASGI app, dispatch, streaming relay, embedded default."""

from gantry.gateway.app import GatewayApp
from gantry.gateway.embedded import EmbeddedEngines
from gantry.gateway.server import build_app, serve

__all__ = ["EmbeddedEngines", "GatewayApp", "build_app", "serve"]
