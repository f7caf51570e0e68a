"""Send one request to an engine: choose, send, and retry elsewhere before the first byte.

Candidates are the model's healthy engines whose breaker allows a request, that have
capacity (gateway in-flight, engine queue, KV usage) and that are not cooling down
after a ``Retry-After``; engines above the KV warning level are used only when no other
engine has room. With no capacity anywhere the request waits in the admission queue;
with no healthy engine at all it fails over to the model's fallback chain or gets 503.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gantry.config import GatewayConfig
from gantry.engines.breaker import (
    Breaker,
    BreakerConfig,
    BreakerState,
    allow,
    record,
    release_probe,
)
from gantry.engines.breaker import available as breaker_available
from gantry.engines.pool import EnginePool
from gantry.engines.transport import EngineRequest, EngineResponse
from gantry.errors import (
    EngineRejected,
    EngineTimeout,
    RetryableEngineError,
    ServiceUnavailable,
)
from gantry.gateway.admission import AdmissionQueue
from gantry.gateway.retry import RetryBudget, backoff, parse_retry_after
from gantry.observability.metrics import GatewayMetrics
from gantry.observability.tracing import Tracer
from gantry.routing import EngineView, Policy, RouteRequest
from gantry.routing.capacity import CapacityLimits, has_capacity, kv_pressured

log = logging.getLogger("gantry.dispatch")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class NoCapacity(Exception):
    """Healthy engines exist but none can take more right now."""


@dataclass(slots=True)
class Attempt:
    engine: str
    response: EngineResponse


class Dispatcher:
    def __init__(
        self,
        pool: EnginePool,
        policy: Policy,
        policy_name: str,
        metrics: GatewayMetrics,
        cfg: GatewayConfig,
    ) -> None:
        self.pool = pool
        self.policy = policy
        self.policy_name = policy_name
        self.metrics = metrics
        self.cfg = cfg
        a, b, r = cfg.admission, cfg.breaker, cfg.retry
        self.limits = CapacityLimits(
            a.max_inflight_per_engine, a.max_engine_waiting, a.kv_warn, a.kv_shed
        )
        self.breaker_cfg = BreakerConfig(
            b.failure_threshold,
            b.failure_rate,
            b.window,
            b.min_calls,
            b.cooldown_s,
            b.half_open_max,
        )
        self.breakers: dict[str, BreakerState] = {}
        self.cooldown: dict[str, float] = {}  # engine -> monotonic time it may be used again
        self.budget = RetryBudget(r.budget_ratio, r.budget_min_per_s)
        self.admission = AdmissionQueue(a.max_waiting_per_model)
        self._rng = random.Random()
        self._routed_children: dict[str, Any] = {}
        pool.listeners.append(lambda _snap: self.admission.wake_all())

    # -- choosing -------------------------------------------------------------------
    def _usable(self, model: str, exclude: set[str], now: float) -> Sequence[EngineView]:
        healthy = self.pool.snapshot.healthy_for(model)
        if not (exclude or self.cooldown or self.breakers):
            return healthy
        out = []
        for e in healthy:
            if e.name in exclude or self.cooldown.get(e.name, 0.0) > now:
                continue
            b = self.breakers.get(e.name)
            if b is not None and not breaker_available(b, self.breaker_cfg, now):
                continue
            out.append(e)
        return out

    def choose(self, route: RouteRequest, exclude: set[str], now: float) -> str:
        usable = self._usable(route.model, exclude, now)
        if not usable:
            raise ServiceUnavailable(
                f"No healthy engine can serve model '{route.model}' right now.", retry_after=2
            )
        inflight, lim = self.pool.inflight, self.limits
        room: list[EngineView] = []
        calm: list[EngineView] = []
        for e in usable:
            if has_capacity(e, inflight, lim):
                room.append(e)
                if not kv_pressured(e, lim):
                    calm.append(e)
        if not room:
            raise NoCapacity(route.model)
        name = self.policy(route, calm or room, inflight).name
        b = self.breakers.get(name)
        if b is not None:
            _, self.breakers[name] = allow(b, self.breaker_cfg, now)
        return name

    def _routed(self, name: str) -> Any:
        c = self._routed_children.get(name)
        if c is None:  # one per engine: bounded by the pool
            c = self._routed_children[name] = self.metrics.routed.labels(name, self.policy_name)
        return c

    # -- outcomes -------------------------------------------------------------------------
    def outcome(self, name: str, failed: bool | None) -> None:
        """Feed the breaker: True = engine failure, False = success, None = no verdict."""
        before = self.breakers.get(name)
        if before is None:
            if not failed:
                return  # a healthy engine's success changes nothing (the common case)
            before = BreakerState()
        elif (
            not failed
            and before.state is Breaker.CLOSED
            and not before.consecutive
            and (True not in before.recent)
        ):
            return
        now = time.monotonic()
        if failed is None:
            after = release_probe(before)
        else:
            after = record(before, self.breaker_cfg, failed, now)
        if after != before:
            self.breakers[name] = after
        if after.state is not before.state:
            log.warning(
                "circuit breaker for engine %s: %s -> %s",
                name,
                before.state.name.lower(),
                after.state.name.lower(),
            )
            self.metrics.breaker_state.labels(name).set(int(after.state))
            self.metrics.breaker_transitions.labels(name, after.state.name.lower()).inc()

    def done(self, name: str, failed: bool | None = None) -> None:
        self.pool.inflight[name] -= 1
        self.outcome(name, failed)
        for model in self.pool.models_of(name):
            self.admission.wake(model)

    # -- sending ----------------------------------------------------------------------------
    async def send(
        self,
        route: RouteRequest,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        first_byte_timeout: float,
        deadline: float,
        priority: int = 0,
        exclude: set[str] | None = None,
        tracer: Tracer | None = None,
    ) -> Attempt:
        """The first engine response that is not a retryable failure.

        The caller owns the response and must call ``done(engine, failed)``.
        """
        tried: set[str] = set(exclude or ())
        last: Exception | None = None
        attempt = 0
        seq = None
        self.budget.on_request(time.monotonic())
        while True:
            now = time.monotonic()
            try:
                if tracer is not None and tracer.enabled:
                    with tracer.span("routing", policy=self.policy_name, attempt=attempt):
                        name = self.choose(route, tried, now)
                else:
                    name = self.choose(route, tried, now)
            except NoCapacity:
                within = min(deadline - now, self.cfg.admission.queue_timeout_s)
                seq = await self.admission.wait_turn(route.model, priority, within, seq)
                self.metrics.queue_wait.labels(route.model).observe(time.monotonic() - now)
                continue
            except ServiceUnavailable:
                if last is not None:
                    raise last from None
                raise
            tried.add(name)
            self._routed(name).inc()
            self.pool.inflight[name] += 1
            try:
                resp = await self._send_one(
                    name, path, body, headers, min(first_byte_timeout, deadline - now)
                )
            except RetryableEngineError as exc:
                self.done(name, failed=True)
                last = exc
            except BaseException:
                self.done(name, failed=None)
                raise
            else:
                if resp.status < 400:
                    return Attempt(name, resp)
                data = await _read_quietly(resp)
                if resp.status not in RETRY_STATUSES:
                    self.done(name, failed=False)  # the engine works; the request is bad
                    raise EngineRejected(resp.status, data, engine=name)
                self.done(name, failed=resp.status != 429)
                self.metrics.upstream_errors.labels(name, f"http_{resp.status}").inc()
                wait = parse_retry_after(resp.headers.get("retry-after"))
                if wait:
                    self.cooldown[name] = time.monotonic() + wait
                last = EngineRejected(resp.status, data, engine=name)
            attempt += 1
            now = time.monotonic()
            if (
                attempt > self.cfg.retry.attempts
                or now >= deadline
                or not self.budget.try_spend(now)
            ):
                raise last
            self.metrics.retries.labels(name, type(last).__name__).inc()
            r = self.cfg.retry
            await asyncio.sleep(
                min(
                    backoff(attempt - 1, r.backoff_base_s, r.backoff_max_s, self._rng),
                    max(0.0, deadline - now),
                )
            )

    async def _send_one(
        self, name: str, path: str, body: bytes, headers: Mapping[str, str], first_byte_s: float
    ) -> EngineResponse:
        try:
            return await self.pool.transport(name).send(
                EngineRequest(
                    "POST",
                    path,
                    body,
                    headers,
                    connect_timeout=self.cfg.timeouts.connect_s,
                    read_timeout=max(0.001, first_byte_s),
                )
            )
        except RetryableEngineError as exc:
            kind = "timeout" if isinstance(exc, EngineTimeout) else "connect"
            self.metrics.upstream_errors.labels(name, kind).inc()
            if kind == "connect":
                self.pool.report_down(name, str(exc))
            raise


async def _read_quietly(resp: EngineResponse) -> bytes:
    try:
        return await resp.read()
    except Exception:
        return b""
