"""Admission: may this request go to the engines now? Behind one ``async with``.

In order: the drain gate (a draining gateway refuses new work with 503 and
``Connection: close``), the caller's limits (429 with ``Retry-After`` and
``x-ratelimit-*`` headers), then capacity, which dispatch asks for through the ticket
(``wait_for_room``) when it finds no engine free. When the model's engines are full because of
the gateway's own in-flight limit, the request waits in the bounded priority queue
until a slot frees, up to an absolute deadline (``admission.queue_timeout_s``, or the
request's own deadline if sooner). When they are full because the engines themselves
say so (their queue, their KV cache), waiting here would only add to the backlog: the
request is refused at once with 503, naming the reason. Leaving the block settles the
limits with the real token usage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

from gantry.config import AdmissionConfig
from gantry.errors import Draining, NoCapacity
from gantry.gateway.accounting import Record
from gantry.gateway.auth import Identity
from gantry.gateway.dispatch import Dispatcher, Room
from gantry.gateway.prepare import Prepared
from gantry.gateway.queue import CapacityQueue, QueueFull, QueueTimeout
from gantry.gateway.security import Lease, Security
from gantry.observability import GatewayMetrics


class Admission:
    def __init__(
        self,
        cfg: AdmissionConfig,
        security: Security,
        dispatcher: Dispatcher,
        metrics: GatewayMetrics,
    ) -> None:
        self.cfg = cfg
        self.security = security
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.queue = CapacityQueue(cfg.max_waiting_per_model)
        self.draining = False
        dispatcher.on_release = self._released
        dispatcher.pool.listeners.append(lambda _snap: self.queue.wake_all())

    def reconfigure(self, cfg: AdmissionConfig) -> None:
        self.cfg = cfg
        self.queue.max_waiting = cfg.max_waiting_per_model

    def _released(self, engine: str) -> None:
        for model in self.dispatcher.pool.models_of(engine):
            self.queue.wake(model)

    def enter(
        self,
        p: Prepared,
        ident: Identity,
        rec: Record,
        response_headers: list[tuple[bytes, bytes]],
        deadline: float,
    ) -> Admitted:
        return Admitted(self, p, ident, rec, response_headers, deadline)

    async def wait_for_room(
        self,
        full: NoCapacity,
        model: str,
        priority: int,
        deadline: float,
        has_room: Callable[[], bool],
    ) -> None:
        """Dispatch found no engine of ``model`` with room (``full`` says why): wait in
        the queue when the gateway's own in-flight limit is the reason (a slot frees as
        soon as a request ends), refuse at once when the engines say they are full."""
        if full.reason != Room.INFLIGHT.value:
            raise full
        loop_deadline = min(deadline, time.monotonic() + self.cfg.queue_timeout_s)
        start = time.monotonic()
        try:
            await self.queue.wait_for_room(model, priority, _loop_time(loop_deadline), has_room)
        except QueueFull:
            raise NoCapacity(
                f"Model '{model}' is at capacity and its queue is full "
                f"({self.queue.max_waiting} waiting); retry shortly.",
                reason="queue_full",
                retry_after=1,
            ) from None
        except QueueTimeout:
            waited = time.monotonic() - start
            raise NoCapacity(
                f"Model '{model}' is at capacity: waited {waited:.1f}s for an engine slot "
                "(every engine has its maximum of requests in flight).",
                reason="queue_timeout",
                retry_after=2,
            ) from None
        finally:
            self.metrics.queue_wait.labels(model).observe(time.monotonic() - start)


class Admitted:
    """One request's way through admission; ``async with`` it around dispatch."""

    __slots__ = ("_a", "_deadline", "_headers", "_ident", "_p", "_rec", "lease")

    def __init__(
        self,
        a: Admission,
        p: Prepared,
        ident: Identity,
        rec: Record,
        response_headers: list[tuple[bytes, bytes]],
        deadline: float,
    ) -> None:
        self._a = a
        self._p = p
        self._ident = ident
        self._rec = rec
        self._headers = response_headers
        self._deadline = deadline
        self.lease: Lease | None = None

    async def __aenter__(self) -> Admitted:
        a, p = self._a, self._p
        if a.draining:
            raise Draining("The gateway is shutting down; retry on another replica.", retry_after=1)
        if self._ident.key_id != "-":
            self.lease = await a.security.acquire(
                self._ident, self._rec.rid, len(p.body), p.max_tokens, self._headers
            )
        # Capacity is checked when dispatch chooses an engine (computing it here too cost
        # a second pass over the engines); with none free, dispatch calls wait_for_room.
        return self

    async def wait_for_room(
        self, full: NoCapacity, model: str, has_room: Callable[[], bool]
    ) -> None:
        """No engine of ``model`` has room: wait in the queue, or refuse at once."""
        await self._a.wait_for_room(full, model, self._p.priority, self._deadline, has_room)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._settle()

    async def _settle(self) -> None:
        lease, self.lease = self.lease, None
        if lease is not None:
            await self._a.security.settle(lease, self._rec.tokens)


def _loop_time(monotonic_deadline: float) -> float:
    """``time.monotonic()`` deadline -> the event loop's clock (the same clock in
    CPython's default and uvloop, but not guaranteed)."""
    import asyncio

    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())
