"""Security and tenancy services the gateway uses: keys, limits, usage, audit.

Owns the SQL engine (keys, ledger, audit), the limit store (memory or Redis) and the
usage ledger, with one explicit lifecycle (``start``/``aclose``). The admin API over
them is ``gantry.gateway.admin``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from gantry.config import GatewayConfig
from gantry.errors import LimitStoreUnavailable, RateLimited
from gantry.gateway.auth import Authenticator, Identity
from gantry.observability.metrics import GatewayMetrics
from gantry.state.keys import KeyStore
from gantry.state.ledger import UsageLedger
from gantry.state.limits import (
    Charge,
    Decision,
    LimitSpec,
    LimitStore,
    MemoryLimitStore,
    RedisLimitStore,
    reset_header,
)
from gantry.state.sql import make_engine, migrate

log = logging.getLogger("gantry.security")


@dataclass(slots=True)
class Lease:
    """A request's charge on its limits, settled with the real usage when it ends."""

    lease: str
    charges: list[Charge]
    estimate: int


class Security:
    def __init__(self, cfg: GatewayConfig, metrics: GatewayMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        need_sql = cfg.security.auth == "required" or cfg.ledger_on
        self.sql = make_engine(cfg.security.database_url) if need_sql else None
        self.keys = KeyStore(self.sql) if self.sql is not None else None
        self.auth = Authenticator(cfg, self.keys if cfg.security.auth == "required" else None)
        rl = cfg.ratelimit
        self.limits: LimitStore = (
            RedisLimitStore(rl.redis_url, rl.key_prefix)
            if rl.store == "redis"
            else MemoryLimitStore()
        )
        self._store_down_logged = 0.0
        self.ledger: UsageLedger | None = None
        if cfg.ledger_on:
            url = cfg.ledger.database_url or cfg.security.database_url
            engine = self.sql if url == cfg.security.database_url else make_engine(url)
            assert engine is not None
            self.ledger = UsageLedger(
                engine,
                batch_size=cfg.ledger.batch_size,
                flush_interval_s=cfg.ledger.flush_interval_s,
                max_queue=cfg.ledger.max_queue,
            )

    async def start(self) -> None:
        engines = {
            id(e): e
            for e in (self.sql, self.ledger.engine if self.ledger else None)
            if e is not None
        }
        for engine in engines.values():
            await migrate(engine)
        await self.auth.start()
        if self.ledger is not None:
            await self.ledger.start()

    async def aclose(self) -> None:
        await self.auth.aclose()
        if self.ledger is not None:
            await self.ledger.aclose()
        await self.limits.aclose()
        if self.sql is not None:
            await self.sql.dispose()

    # -- limits -------------------------------------------------------------------------
    def charges_for(self, ident: Identity) -> list[Charge]:
        if ident.key_id == "-":
            return []
        tier = self.cfg.tiers.get(ident.tier)
        out = []
        if tier is not None and _limited(tier):
            out.append(Charge(f"key:{ident.key_id}", _spec(tier)))
        tenant = self.cfg.tenants.get(ident.tenant)
        if tenant is not None and tenant.tier and tenant.tier in self.cfg.tiers:
            t = self.cfg.tiers[tenant.tier]
            if _limited(t):
                out.append(Charge(f"tenant:{ident.tenant}", _spec(t)))
        return out

    async def acquire(
        self,
        ident: Identity,
        lease: str,
        body_bytes: int,
        max_tokens: int | None,
        headers: list[tuple[bytes, bytes]],
    ) -> Lease | None:
        """Charge the caller's limits; ``RateLimited`` (429) when one is reached.

        Returns the lease to settle when the request ends, or None when the caller has
        no limits (then there is nothing to settle)."""
        charges = self.charges_for(ident)
        if not charges:
            return None
        # Estimate: the request's size in tokens (~4 bytes each) plus the output it asks for.
        estimate = body_bytes // 4 + (max_tokens or self.cfg.ratelimit.default_max_tokens)
        try:
            d = await self.limits.acquire(lease, charges, estimate)
        except LimitStoreUnavailable as exc:
            self._store_down(charges, exc)  # raises when the store must fail closed
            return None
        headers.extend(_rate_headers(d))
        if not d.allowed:
            raise RateLimited(
                f"Rate limit reached for key {ident.key_id}: {_WHAT[d.dimension]}.",
                retry_after=max(1.0, d.retry_after),
            )
        return Lease(lease, charges, estimate)

    def _store_down(self, charges: list[Charge], exc: LimitStoreUnavailable) -> None:
        rl = self.cfg.ratelimit
        quota = any(c.spec.tokens_per_day for c in charges)
        refuse = (quota and not rl.quotas_fail_open) or not rl.rate_limits_fail_open
        now = time.monotonic()
        if now - self._store_down_logged > 10.0:  # once per 10 s, not per request
            self._store_down_logged = now
            log.error(
                "limit store unreachable (%s): %s",
                exc.message,
                "refusing (quotas fail closed)"
                if quota and refuse
                else "refusing"
                if refuse
                else "allowing",
            )
        if refuse:
            raise exc

    async def settle(self, lease: Lease, actual: int) -> None:
        try:
            await self.limits.settle(
                lease.lease, lease.charges, lease.estimate, actual or lease.estimate
            )
        except LimitStoreUnavailable:
            pass  # leases expire by themselves


_WHAT = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute",
    "concurrent": "concurrent requests",
    "tokens_per_day": "tokens per day",
}


def _limited(t: Any) -> bool:
    return bool(t.rpm or t.tpm or t.concurrent or t.tokens_per_day)


def _spec(t: Any) -> LimitSpec:
    return LimitSpec(t.rpm, t.tpm, t.concurrent, t.tokens_per_day)


def _rate_headers(d: Decision) -> list[tuple[bytes, bytes]]:
    out = []
    for kind, v in (("requests", d.requests), ("tokens", d.tokens)):
        if v is not None:
            limit, remaining, reset = v
            out += [
                (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
                (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, remaining)).encode()),
                (f"x-ratelimit-reset-{kind}".encode(), reset_header(reset).encode()),
            ]
    return out


def with_costs(rows: list[dict[str, Any]], cfg: GatewayConfig) -> list[dict[str, Any]]:
    for r in rows:
        price = cfg.prices.get(str(r.get("model")))
        r["cost"] = (
            None
            if price is None
            else round(
                (r["prompt_tokens"] or 0) / 1e6 * price.prompt_per_1m
                + (r["completion_tokens"] or 0) / 1e6 * price.completion_per_1m,
                6,
            )
        )
    return rows
