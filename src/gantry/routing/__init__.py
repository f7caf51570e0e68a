"""Routing: pure policies that pick an engine from a pool snapshot, and the bounded
prefix/KV block index the cache-aware ones read."""

from gantry.routing.blocks import BlockIndex, text_chain
from gantry.routing.cache_aware import KVAware, PrefixAware
from gantry.routing.policies import (
    DEFAULT_APPROX_BLOCKS,
    Policy,
    PowerOfTwo,
    RoundRobin,
    RouteRequest,
    SessionAffinity,
    StickyLeastLoaded,
    least_loaded,
    load_of,
    make_policy,
    record_choice,
    record_started,
)
from gantry.routing.snapshot import EngineView, PoolSnapshot

__all__ = [
    "DEFAULT_APPROX_BLOCKS",
    "BlockIndex",
    "EngineView",
    "KVAware",
    "Policy",
    "PoolSnapshot",
    "PowerOfTwo",
    "PrefixAware",
    "RoundRobin",
    "RouteRequest",
    "SessionAffinity",
    "StickyLeastLoaded",
    "least_loaded",
    "load_of",
    "make_policy",
    "record_choice",
    "record_started",
    "text_chain",
]
