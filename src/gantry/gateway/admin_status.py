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


# -- the page as text (``gantry status``) -------------------------------------------------
def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.0f}%"


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def render(page: dict[str, Any]) -> str:
    """One screen: the gateway, its engines, queues, splits, limits, ledger, discovery."""
    state = "ready" if page["ready"] else "NOT READY"
    if page["draining"]:
        state += ", draining"
    lines = [f"gantry {page['version']}  pid {page['pid']}  up {_duration(page['uptime_s'])}"]
    lines.append(f"state     {state}")
    lines += [f"          - {r}" for r in page["reasons"]]
    rows = [("ENGINE", "SOURCE", "HEALTH", "BREAKER", "INFL", "RUN", "WAIT", "KV", "MODELS")]
    for e in page["engines"]:
        health = "draining" if e["draining"] else "healthy" if e["healthy"] else "down"
        rows.append(
            (
                e["name"],
                e["source"],
                health,
                e["breaker"],
                str(e["inflight"]),
                f"{e['running']:g}",
                f"{e['waiting']:g}",
                _pct(e["kv_usage"]),
                ",".join(e["models"]) + (f" @{e['group']}" if e["group"] else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines.append("")
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if not page["engines"]:
        lines.append("(no engines)")
    lines.append("")
    queues = ", ".join(f"{m} {n}" for m, n in page["queues"].items()) or "-"
    lines.append(f"queues    {queues}")
    for name, s in page["splits"].items():
        total = sum(t["weight"] for t in s["targets"]) or 1.0
        arms = ", ".join(f"{t['arm']} {100 * t['weight'] / total:.0f}%" for t in s["targets"])
        lines.append(f"split     {name}: {arms} (sticky: {s['sticky']})")
    lim = page["limits"]
    lines.append(
        f"limits    {lim['store']} store, {'reachable' if lim['reachable'] else 'UNREACHABLE'}"
        f"; if down: rate limits {'open' if lim['rate_limits_fail_open'] else 'closed'}, "
        f"quotas {'open' if lim['quotas_fail_open'] else 'closed'}"
    )
    led = page["ledger"]
    lines.append(
        f"ledger    {led['database']}: {led['queued']} queued, {led['written']} written, "
        f"{led['dropped']} dropped"
        if led["enabled"]
        else "ledger    off"
    )
    for d in page["discovery"]:
        state = "up" if d["up"] else f"DOWN ({d['last_error']})"
        lines.append(
            f"discovery {d['source']}: {state}, {d['engines']} engine(s), "
            f"{d['errors']} error(s), {d['resyncs']} re-list(s)"
        )
    return "\n".join(lines)


__all__ = ["PATH", "Observed", "handle", "render", "status"]
