"""Engines: the transport seam, the pool with health probes and load scrape."""

from gantry.engines.h1 import H1Transport
from gantry.engines.health import HealthState, mark_down, observe
from gantry.engines.memory import MemoryResponse, MemoryTransport
from gantry.engines.pool import EnginePool
from gantry.engines.scrape import EngineLoad, parse_metrics
from gantry.engines.transport import EngineRequest, EngineResponse, EngineTransport, HTTPTransport
from gantry.routing.snapshot import EngineView, PoolSnapshot

__all__ = [
    "EngineLoad",
    "EnginePool",
    "EngineRequest",
    "EngineResponse",
    "EngineTransport",
    "EngineView",
    "H1Transport",
    "HTTPTransport",
    "HealthState",
    "MemoryResponse",
    "MemoryTransport",
    "PoolSnapshot",
    "mark_down",
    "observe",
    "parse_metrics",
]
