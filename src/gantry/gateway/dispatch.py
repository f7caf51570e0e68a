"""Send one request to an engine: choose, send, retry elsewhere before the first byte."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass

from gantry.engines.pool import EnginePool
from gantry.engines.transport import EngineRequest, EngineResponse
from gantry.errors import (
    EngineRejected,
    EngineTimeout,
    RetryableEngineError,
    ServiceUnavailable,
)
from gantry.observability.metrics import GatewayMetrics
from gantry.observability.tracing import Tracer
from gantry.routing import Policy, RouteRequest

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


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
        *,
        retries: int,
        connect_timeout: float,
    ) -> None:
        self.pool = pool
        self.policy = policy
        self.policy_name = policy_name
        self.metrics = metrics
        self.retries = retries
        self.connect_timeout = connect_timeout

    def choose(self, route: RouteRequest, exclude: set[str]) -> str:
        candidates = self.pool.snapshot.healthy_for(route.model)
        if exclude:
            candidates = tuple(e for e in candidates if e.name not in exclude)
        if not candidates:
            raise ServiceUnavailable(
                f"No healthy engine can serve model '{route.model}' right now.",
                retry_after=2,
            )
        return self.policy(route, candidates, self.pool.inflight).name

    async def send(
        self,
        route: RouteRequest,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        first_byte_timeout: float | None,
        tracer: Tracer | None = None,
    ) -> Attempt:
        """Return the first engine response that is not a retryable failure.

        The caller owns the returned response and must release the in-flight slot
        with ``done(attempt.engine)``.
        """
        tried: set[str] = set()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                if tracer is not None and tracer.enabled:
                    with tracer.span("routing", policy=self.policy_name, attempt=attempt):
                        name = self.choose(route, tried)
                else:
                    name = self.choose(route, tried)
            except ServiceUnavailable:
                if last is not None:
                    break
                raise
            tried.add(name)
            self.metrics.routed.labels(name, self.policy_name).inc()
            self.pool.inflight[name] += 1
            try:
                resp = await self.pool.transport(name).send(
                    EngineRequest(
                        "POST",
                        path,
                        body,
                        headers,
                        connect_timeout=self.connect_timeout,
                        read_timeout=first_byte_timeout,
                    )
                )
            except RetryableEngineError as exc:
                self.done(name)
                kind = "timeout" if isinstance(exc, EngineTimeout) else "connect"
                self.metrics.upstream_errors.labels(name, kind).inc()
                if kind == "connect":
                    self.pool.report_down(name, str(exc))
                last = exc
            except BaseException:
                self.done(name)
                raise
            else:
                if resp.status < 400:
                    return Attempt(name, resp)
                data = await _read_quietly(resp)
                if resp.status not in RETRY_STATUSES:
                    self.done(name)
                    raise EngineRejected(resp.status, data, engine=name)
                self.done(name)
                self.metrics.upstream_errors.labels(name, f"http_{resp.status}").inc()
                last = EngineRejected(resp.status, data, engine=name)
                delay = _retry_after(resp.headers.get("retry-after"))
                if delay and attempt < self.retries:
                    await asyncio.sleep(min(delay, 2.0))
            if attempt < self.retries:
                self.metrics.retries.labels(name, type(last).__name__).inc()
                await asyncio.sleep(random.uniform(0, 0.01 * (2**attempt)))
        assert last is not None
        raise last

    def done(self, name: str) -> None:
        self.pool.inflight[name] -= 1


async def _read_quietly(resp: EngineResponse) -> bytes:
    try:
        return await resp.read()
    except Exception:
        return b""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
