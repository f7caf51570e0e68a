"""The capacity queue: priority order, bound, and an absolute deadline."""

from __future__ import annotations

import asyncio

import pytest

from gantry.gateway.queue import CapacityQueue, QueueFull, QueueTimeout


def test_priority_order_bound_and_deadline():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        q = CapacityQueue(max_waiting=3)
        order: list[str] = []

        async def waiter(name: str, prio: int) -> None:
            await q.wait_for_room("m", prio, loop.time() + 30, lambda: True)
            order.append(name)

        tasks = [
            asyncio.create_task(waiter(n, p)) for n, p in (("low", 5), ("high", -1), ("mid", 0))
        ]
        await asyncio.sleep(0)
        assert q.waiting("m") == 3
        with pytest.raises(QueueFull):
            await q.wait_for_room("m", 0, loop.time() + 30, lambda: True)  # full: at once
        for _ in range(3):
            q.wake("m")
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert order == ["high", "mid", "low"]
        with pytest.raises(QueueTimeout):
            await q.wait_for_room("m", 0, loop.time() - 1, lambda: True)  # already late
        assert q.waiting("m") == 0
        # Waiters that time out with nobody waking them leave no entries behind.
        for _ in range(10):
            with pytest.raises(QueueTimeout):
                await q.wait_for_room("m", 0, loop.time() + 0.001, lambda: True)
        assert q._queues["m"] == []

    asyncio.run(main())


def test_deadline_is_absolute_however_often_the_waiter_is_woken():
    """Wake-ups without room (a pool refresh, another request taking the slot) put the
    waiter back in its place; they never restart its deadline."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        q = CapacityQueue()
        deadline = loop.time() + 0.3
        woken = 0

        async def waker() -> None:
            nonlocal woken
            while True:
                await asyncio.sleep(0.01)
                q.wake_all()  # like a pool snapshot every 10 ms
                woken += 1

        w = asyncio.create_task(waker())
        try:
            with pytest.raises(QueueTimeout):
                await q.wait_for_room("m", 0, deadline, lambda: False)
        finally:
            w.cancel()
        assert loop.time() >= deadline  # not before its deadline
        assert woken >= 2  # it was woken, and went back to wait, several times
        assert q.waiting("m") == 0

    asyncio.run(main())


def test_woken_waiter_keeps_its_place_when_the_room_is_gone():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        q = CapacityQueue()
        room = {"free": False}
        order: list[str] = []

        async def waiter(name: str) -> None:
            await q.wait_for_room("m", 0, loop.time() + 30, lambda: room["free"])
            order.append(name)

        first = asyncio.create_task(waiter("first"))
        await asyncio.sleep(0)
        second = asyncio.create_task(waiter("second"))
        await asyncio.sleep(0)
        q.wake("m")  # no room after all: "first" goes back ahead of "second"
        await asyncio.sleep(0)
        assert q.waiting("m") == 2
        room["free"] = True
        q.wake("m")
        await asyncio.sleep(0)
        q.wake("m")
        await asyncio.gather(first, second)
        assert order == ["first", "second"]

    asyncio.run(main())
