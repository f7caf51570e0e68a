"""Limits: the memory store's semantics, and the Redis store giving the same answers."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from gantry.state.limits import (
    Charge,
    LimitSpec,
    MemoryLimitStore,
    RedisLimitStore,
    reset_header,
)


def redis_store() -> RedisLimitStore | None:
    try:
        import redis

        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=0.5).ping()
    except Exception:
        return None
    return RedisLimitStore("redis://127.0.0.1:6379/0", prefix=f"t-{uuid.uuid4().hex[:8]}:")


def stores() -> list[object]:
    out: list[object] = [MemoryLimitStore]
    out.append(
        pytest.param("redis", marks=pytest.mark.skipif(redis_store() is None, reason="no Redis"))
    )
    return out


def make(kind: object):  # type: ignore[no-untyped-def]
    return MemoryLimitStore() if kind is MemoryLimitStore else redis_store()


@pytest.mark.parametrize("kind", stores())
def test_rpm_bucket_refills_over_a_minute(kind):
    async def main() -> None:
        s = make(kind)
        ch = [Charge("key:a", LimitSpec(rpm=3))]
        t = 1000.0
        for i in range(3):
            d = await s.acquire(f"l{i}", ch, 1, now=t)
            assert d.allowed and d.requests is not None and d.requests[1] == 2 - i
        d = await s.acquire("l3", ch, 1, now=t)
        assert not d.allowed and d.dimension == "rpm" and 19 < d.retry_after <= 20.01
        assert (await s.acquire("l4", ch, 1, now=t + 20.5)).allowed  # one token back
        await s.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("kind", stores())
def test_tpm_estimate_then_settle(kind):
    async def main() -> None:
        s = make(kind)
        ch = [Charge("key:b", LimitSpec(tpm=1000))]
        assert (await s.acquire("a", ch, 800, now=0.0)).allowed
        assert not (await s.acquire("b", ch, 300, now=0.0)).allowed
        await s.settle("a", ch, 800, 100, now=0.0)  # used far less than estimated
        d = await s.acquire("c", ch, 300, now=0.0)
        assert d.allowed and d.tokens is not None and d.tokens[1] == 600
        await s.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("kind", stores())
def test_concurrency_leases_and_daily_quota(kind):
    async def main() -> None:
        s = make(kind)
        ch = [Charge("key:c", LimitSpec(concurrent=2, tokens_per_day=100))]
        assert (await s.acquire("x", ch, 10, now=50.0)).allowed
        assert (await s.acquire("y", ch, 10, now=50.0)).allowed
        d = await s.acquire("z", ch, 10, now=50.0)
        assert not d.allowed and d.dimension == "concurrent"
        await s.settle("x", ch, 10, 10, now=50.0)
        assert (await s.acquire("z", ch, 10, now=50.0)).allowed
        d = await s.acquire("q", ch, 90, now=51.0)
        assert not d.allowed and d.dimension in ("concurrent", "tokens_per_day")
        await s.settle("y", ch, 10, 10, now=51.0)
        d = await s.acquire("q", ch, 90, now=51.0)
        assert not d.allowed and d.dimension == "tokens_per_day"
        assert d.retry_after > 86000  # next UTC day
        assert (await s.acquire("q", ch, 90, now=86400 + 51.0)).allowed
        await s.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("kind", stores())
def test_all_subjects_must_allow_and_nothing_is_charged_on_refusal(kind):
    async def main() -> None:
        s = make(kind)
        key = Charge("key:d", LimitSpec(rpm=10))
        tenant = Charge("tenant:t", LimitSpec(rpm=1))
        assert (await s.acquire("1", [key, tenant], 1, now=0.0)).allowed
        d = await s.acquire("2", [key, tenant], 1, now=0.0)
        assert not d.allowed
        d = await s.acquire("3", [key], 1, now=0.0)
        assert d.allowed and d.requests is not None and d.requests[1] == 8  # 10 - 2
        await s.aclose()

    asyncio.run(main())


def test_reset_header_format():
    assert reset_header(0.5) == "0.5s" and reset_header(1) == "1s"
    assert reset_header(360) == "6m0s"
