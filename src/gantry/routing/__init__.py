"""Routing: pure policies that pick an engine from a pool snapshot."""

from gantry.routing.blocks import BlockIndex, text_chain
from gantry.routing.policies import (
    Policy,
    RoundRobin,
    RouteRequest,
    SessionAffinity,
    least_loaded,
    load_of,
    make_policy,
)
from gantry.routing.snapshot import EngineView, PoolSnapshot

__all__ = [
    "BlockIndex",
    "EngineView",
    "Policy",
    "PoolSnapshot",
    "RoundRobin",
    "RouteRequest",
    "SessionAffinity",
    "least_loaded",
    "load_of",
    "make_policy",
    "text_chain",
]
