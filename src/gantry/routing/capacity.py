"""Can an engine take one more request? A pure check over engine signals.

An engine is held back when the gateway already has ``max_inflight`` requests on it,
when its own queue (``num_requests_waiting``) is at ``max_engine_waiting``, or when its
KV cache is above ``kv_shed``. Above ``kv_warn`` it is still used, but routing prefers
engines below (``kv_pressured``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gantry.routing.snapshot import EngineView


@dataclass(frozen=True, slots=True)
class CapacityLimits:
    max_inflight: int = 256  # per engine, from this gateway; 0 = no limit
    max_engine_waiting: int = 64  # the engine's own queue; 0 = ignore
    kv_warn: float = 0.85
    kv_shed: float = 0.95


def has_capacity(e: EngineView, inflight: Mapping[str, int], lim: CapacityLimits) -> bool:
    if lim.max_inflight and inflight.get(e.name, 0) >= lim.max_inflight:
        return False
    if lim.max_engine_waiting and e.waiting >= lim.max_engine_waiting:
        return False
    return not (e.kv_usage is not None and e.kv_usage >= lim.kv_shed)


def kv_pressured(e: EngineView, lim: CapacityLimits) -> bool:
    return e.kv_usage is not None and e.kv_usage >= lim.kv_warn
