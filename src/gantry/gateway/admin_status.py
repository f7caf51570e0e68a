"""``GET /admin/status``: one page for operators (``gantry status`` prints it).

Engines (health, breaker, load, KV usage, models, where they came from), the capacity
queues, traffic splits, the limit store, the usage ledger and discovery, read from the
running gateway's own state: nothing here waits on an engine. Engines are named, never
located: no URL, no address, no key appears (the page may be pasted into a ticket).
"""

from __future__ import annotations

import os
import time
from typing import Any, Protocol

from gantry import __version__
from gantry.config import GatewayConfig
from gantry.engines.breaker import Breaker, BreakerState
from gantry.engines.discovery import Discovery
from gantry.engines.pool import EnginePool
from gantry.errors import MethodNotAllowed, NotFound
from gantry.state.ledger import UsageLedger
from gantry.state.limits import LimitStore

PATH = "/admin/status"


class Observed(Protocol):
    """What the status page reads (``Gateway`` has all of it)."""

    cfg: GatewayConfig
    pool: EnginePool
    discovery: Discovery | None
    started_at: float

    @property
    def draining(self) -> bool: ...
    def breakers(self) -> dict[str, BreakerState]: ...
    def queued(self, model: str) -> int: ...
    def limit_store(self) -> LimitStore: ...
    def ledger(self) -> UsageLedger | None: ...
    def readiness(self) -> tuple[bool, list[str]]: ...


async def handle(gw: Observed, method: str, path: str) -> tuple[int, Any]:
    if path != PATH:
        raise NotFound(f"Unknown admin path {path}.")
    if method != "GET":
        raise MethodNotAllowed(f"Method {method} not allowed on {path}.")
    return 200, await status(gw)


async def status(gw: Observed) -> dict[str, Any]:
    cfg, snap = gw.cfg, gw.pool.snapshot
    ready, reasons = gw.readiness()
    return {
        "version": __version__,
        "pid": os.getpid(),
        "uptime_s": round(time.monotonic() - gw.started_at, 1),
        "ready": ready,
        "reasons": reasons,
        "draining": gw.draining,
        "engines": _engines(gw),
        "queues": {m: gw.queued(m) for m in sorted(snap.by_model)},
        "splits": {
            name: {
                "sticky": s.sticky,
                "targets": [{"arm": t.arm, "weight": t.weight} for t in s.targets],
            }
            for name, s in sorted(cfg.splits.items())
        },
        "limits": await _limits(gw),
        "ledger": _ledger(gw),
        "discovery": [s.as_dict() for s in gw.discovery.statuses()] if gw.discovery else [],
    }


def _engines(gw: Observed) -> list[dict[str, Any]]:
    breakers = gw.breakers()
    found = gw.discovery.owned if gw.discovery is not None else {}
    out = []
    for e in gw.pool.snapshot.engines:
        b = breakers.get(e.name)
        out.append(
            {
                "name": e.name,
                "source": found.get(e.name, "static"),
                "healthy": e.healthy,
                "draining": e.draining,
                "reason": e.reason,
                "breaker": (b.state if b is not None else Breaker.CLOSED).name.lower(),
                "inflight": gw.pool.inflight.get(e.name, 0),
                "running": e.running,
                "waiting": e.waiting,
                "kv_usage": e.kv_usage,
                "models": list(e.models),
                "group": e.group,
            }
        )
    return out


async def _limits(gw: Observed) -> dict[str, Any]:
    rl = gw.cfg.ratelimit
    return {
        "store": rl.store,
        "reachable": await gw.limit_store().ping(),
        "rate_limits_fail_open": rl.rate_limits_fail_open,
        "quotas_fail_open": rl.quotas_fail_open,
    }


def _ledger(gw: Observed) -> dict[str, Any]:
    ledger = gw.ledger()
    if ledger is None:
        return {"enabled": False}
    db = ledger.engine.dialect.name  # the kind of database, never its URL
    return {"enabled": True, "database": db, **ledger.stats()}


__all__ = ["PATH", "Observed", "handle", "status"]
