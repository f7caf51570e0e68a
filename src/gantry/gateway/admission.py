"""The bounded admission queue: requests wait here when no engine has capacity.

One priority queue per model (lower priority value first, FIFO within a priority),
at most ``max_waiting`` entries each; a full queue rejects at once with 503 and
``Retry-After``. A waiter leaves when woken (an engine freed a slot, the pool changed)
or at its deadline (503). Waking is a callback, not a poll: no task per waiter.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

from gantry.errors import ServiceUnavailable


@dataclass(order=True, slots=True)
class _Waiter:
    priority: int
    seq: int
    fut: asyncio.Future[None] = field(compare=False)
    woken: bool = field(default=False, compare=False)


class AdmissionQueue:
    def __init__(self, max_waiting: int = 100, max_models: int = 1024) -> None:
        self.max_waiting = max_waiting
        self._queues: dict[str, list[_Waiter]] = {}
        self._max_models = max_models
        self._seq = itertools.count()

    def waiting(self, model: str) -> int:
        # Every entry is live: leavers remove themselves, wake() pops the woken.
        return len(self._queues.get(model, ()))

    async def wait_turn(
        self, model: str, priority: int, within_s: float, seq: int | None = None
    ) -> int:
        """Wait until woken; returns the waiter's sequence number (to keep its place)."""
        q = self._queues.get(model)
        if q is None:
            if len(self._queues) >= self._max_models:
                self._gc()
            q = self._queues[model] = []
        if self.waiting(model) >= self.max_waiting:
            raise ServiceUnavailable(
                f"Model '{model}' is at capacity and its queue is full; retry shortly.",
                retry_after=1,
            )
        if within_s <= 0:
            raise ServiceUnavailable(f"Model '{model}' is at capacity.", retry_after=1)
        loop = asyncio.get_running_loop()
        w = _Waiter(priority, next(self._seq) if seq is None else seq, loop.create_future())
        heapq.heappush(q, w)
        timer = loop.call_later(within_s, _expire, w.fut)
        try:
            await w.fut
        except TimeoutError:
            raise ServiceUnavailable(
                f"Timed out after {within_s:.1f}s waiting for capacity on model '{model}'.",
                retry_after=2,
            ) from None
        finally:
            timer.cancel()
            if not w.fut.done():
                w.fut.cancel()
            if not w.woken:
                _remove(q, w)  # left without being woken (deadline, cancel)
        return w.seq

    def wake(self, model: str, n: int = 1) -> None:
        q = self._queues.get(model)
        while q and n > 0:
            w = heapq.heappop(q)
            w.woken = True
            if not w.fut.done():
                w.fut.set_result(None)
                n -= 1

    def wake_all(self) -> None:
        for model in list(self._queues):
            self.wake(model, len(self._queues[model]))

    def _gc(self) -> None:
        for model in [m for m, q in self._queues.items() if not q]:
            del self._queues[model]


def _remove(q: list[_Waiter], w: _Waiter) -> None:
    try:
        q.remove(w)  # O(max_waiting): the queue is bounded
    except ValueError:
        return
    heapq.heapify(q)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())
