"""Admission and dispatch-decision overhead per request, in process.

    python benchmarks/admission_overhead.py

* fast path: choosing an engine (health, breaker, Retry-After cool-down, capacity from
  engine signals, KV pressure, routing policy) and releasing it (breaker outcome, queue
  wake-up), with three healthy engines;
* queued path: a request that waits in the bounded priority queue and is woken.
"""

from __future__ import annotations

import asyncio
import time

from gantry.config import EngineSpec, GatewayConfig, HealthConfig
from gantry.engines.pool import EnginePool
from gantry.gateway.dispatch import Dispatcher, Outcome
from gantry.gateway.queue import CapacityQueue
from gantry.observability.metrics import GatewayMetrics
from gantry.routing import EngineView, PoolSnapshot, RouteRequest


class _NoTransport:
    async def send(self, request: object) -> object:  # pragma: no cover - never called
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def setup() -> Dispatcher:
    specs = tuple(
        EngineSpec(url=f"http://127.0.0.1:{9000 + i}", name=f"e{i}", models=("m",))
        for i in range(3)
    )
    pool = EnginePool(specs, HealthConfig(), transport_factory=lambda s: _NoTransport())
    views = tuple(
        EngineView(s.name or "", s.url, ("m",), True, running=i, waiting=0, kv_usage=0.3)
        for i, s in enumerate(specs)
    )
    pool.snapshot = PoolSnapshot.build(1, views)
    return Dispatcher(pool, GatewayMetrics(), GatewayConfig())


def fast_path(d: Dispatcher, n: int) -> float:
    route = RouteRequest("m")
    t0 = time.perf_counter()
    for _ in range(n):
        now = time.monotonic()
        d.budget.on_request(now)
        name = d.choose(route, set(), now)
        d.pool.inflight[name] += 1
        d.release(name, Outcome.OK)
    return (time.perf_counter() - t0) / n


async def queued_path(d: Dispatcher, n: int) -> float:
    q = CapacityQueue(max_waiting=100)
    loop = asyncio.get_running_loop()

    async def waiter() -> None:
        await q.wait_for_room("m", 0, loop.time() + 30.0, lambda: True)

    t0 = time.perf_counter()
    for _ in range(n // 100):
        tasks = [asyncio.create_task(waiter()) for _ in range(100)]
        await asyncio.sleep(0)
        for _ in range(100):
            q.wake("m")
        await asyncio.gather(*tasks)
    return (time.perf_counter() - t0) / n


def main() -> None:
    d = setup()
    fast_path(d, 10_000)  # warm-up
    fast = fast_path(d, 200_000)
    queued = asyncio.run(queued_path(d, 50_000))
    print("admission overhead per request (one core)")
    print(f"  fast path (engine has capacity):   {fast * 1e6:7.1f} us")
    print(f"  queued path (wait in queue, woken): {queued * 1e6:7.1f} us")


if __name__ == "__main__":
    main()
