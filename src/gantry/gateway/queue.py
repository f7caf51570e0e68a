"""The bounded capacity queue: requests wait here while their model's engines are full.

One priority queue per model (lower priority value first, FIFO within a priority), at
most ``max_waiting`` entries each. A waiter is woken when an engine frees a slot or the
pool changes; it then checks for room and, if another request took it, goes back to
its place. Its deadline is absolute: wake-ups do not restart it. Waking is a callback,
not a poll: no task per waiter.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


class QueueFull(Exception):
    pass


class QueueTimeout(Exception):
    pass


@dataclass(order=True, slots=True)
class _Waiter:
    priority: int
    seq: int
    fut: asyncio.Future[None] = field(compare=False)
    queued: bool = field(default=False, compare=False)


class CapacityQueue:
    def __init__(self, max_waiting: int = 100, max_models: int = 1024) -> None:
        self.max_waiting = max_waiting
        self._queues: dict[str, list[_Waiter]] = {}
        self._max_models = max_models
        self._seq = itertools.count()

    def waiting(self, model: str) -> int:
        # Every entry is live: leavers remove themselves, wake() pops the woken.
        return len(self._queues.get(model, ()))

    def total_waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def wait_for_room(
        self, model: str, priority: int, deadline: float, has_room: Callable[[], bool]
    ) -> None:
        """Return once ``has_room()`` holds; ``QueueFull`` at once when the queue is
        full, ``QueueTimeout`` at ``deadline`` (``loop.time()`` clock)."""
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:
            raise QueueTimeout()
        q = self._queue(model)
        if len(q) >= self.max_waiting:
            raise QueueFull()
        w = _Waiter(priority, next(self._seq), loop.create_future())
        timer = loop.call_at(deadline, _expire, w)
        try:
            while True:
                w.queued = True
                heapq.heappush(q, w)
                await w.fut
                if has_room():
                    return
                if loop.time() >= deadline:  # the timer may have fired on a woken future
                    raise QueueTimeout()
                w.fut = loop.create_future()  # back to the same place: same priority, seq
        except TimeoutError:
            raise QueueTimeout() from None
        finally:
            timer.cancel()
            if w.queued:
                _remove(q, w)  # left without being woken (deadline, cancel)

    def wake(self, model: str, n: int = 1) -> None:
        q = self._queues.get(model)
        while q and n > 0:
            w = heapq.heappop(q)
            w.queued = False
            if not w.fut.done():
                w.fut.set_result(None)
                n -= 1

    def wake_all(self) -> None:
        for model in list(self._queues):
            self.wake(model, len(self._queues[model]))

    def _queue(self, model: str) -> list[_Waiter]:
        q = self._queues.get(model)
        if q is None:
            if len(self._queues) >= self._max_models:
                for m in [m for m, q in self._queues.items() if not q]:
                    del self._queues[m]
            q = self._queues[model] = []
        return q


def _remove(q: list[_Waiter], w: _Waiter) -> None:
    w.queued = False
    try:
        q.remove(w)  # O(max_waiting): the queue is bounded
    except ValueError:
        return
    heapq.heapify(q)


def _expire(w: _Waiter) -> None:
    if not w.fut.done():
        w.fut.set_exception(TimeoutError())
