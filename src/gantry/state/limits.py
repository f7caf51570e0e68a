"""Rate limits and quotas behind one interface: memory (one process) or Redis (shared).

Per subject (a key, a tenant): requests per minute and tokens per minute are token
buckets (capacity = the limit, refilled evenly over a minute); concurrent requests are
leases; tokens per day is a counter per UTC day. A request is admitted only if every
dimension of every subject allows it, and then charged on all of them at once (in Redis:
one Lua script, so N replicas enforce one limit). Tokens are charged from an estimate at
admission and settled with the real usage afterwards.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from gantry.errors import LimitStoreUnavailable

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class LimitSpec:
    rpm: int | None = None
    tpm: int | None = None
    concurrent: int | None = None
    tokens_per_day: int | None = None


@dataclass(frozen=True, slots=True)
class Charge:
    subject: str  # "key:<id>" or "tenant:<name>"
    spec: LimitSpec


@dataclass(slots=True)
class Decision:
    allowed: bool
    dimension: str = ""  # which limit refused: rpm, tpm, concurrent, tokens_per_day
    retry_after: float = 0.0
    # for the x-ratelimit-* headers (first subject): limit, remaining, reset seconds
    requests: tuple[int, int, float] | None = None
    tokens: tuple[int, int, float] | None = None


class LimitStore(Protocol):
    async def acquire(
        self, lease: str, charges: list[Charge], tokens: int, now: float | None = None
    ) -> Decision: ...

    async def settle(
        self,
        lease: str,
        charges: list[Charge],
        estimate: int,
        actual: int,
        now: float | None = None,
    ) -> None: ...

    async def ping(self) -> bool: ...  # the store answers (for status pages)

    async def aclose(self) -> None: ...


def refill(tokens: float, last: float, capacity: float, now: float) -> float:
    return min(capacity, tokens + max(0.0, now - last) * capacity / 60.0)


def seconds_to_midnight(now: float) -> float:
    return DAY - (now % DAY)


@dataclass(slots=True)
class _State:
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # dim -> (tokens, ts)
    leases: dict[str, float] = field(default_factory=dict)  # lease -> expiry
    day: tuple[int, int] = (0, 0)  # (day number, tokens used)


class MemoryLimitStore:
    """One process; bounded by ``max_subjects`` (least recently used go first)."""

    def __init__(self, lease_s: float = 900.0, max_subjects: int = 100_000) -> None:
        self._s: OrderedDict[str, _State] = OrderedDict()
        self._lease_s = lease_s
        self._max = max_subjects

    def _state(self, subject: str) -> _State:
        st = self._s.get(subject)
        if st is None:
            while len(self._s) >= self._max:
                self._s.popitem(last=False)
            st = self._s[subject] = _State()
        else:
            self._s.move_to_end(subject)
        return st

    async def acquire(
        self, lease: str, charges: list[Charge], tokens: int, now: float | None = None
    ) -> Decision:
        now = time.time() if now is None else now
        day = int(now // DAY)
        first = Decision(True)
        writes: list[tuple[_State, str, tuple[float, float]]] = []  # applied only if all pass
        leases: list[_State] = []
        days: list[tuple[_State, int]] = []
        for i, ch in enumerate(charges):
            st, sp = self._state(ch.subject), ch.spec
            st.leases = {k: v for k, v in st.leases.items() if v > now}
            if sp.rpm:
                t = refill(*st.buckets.get("rpm", (sp.rpm, now)), sp.rpm, now)
                if t < 1:
                    return Decision(False, "rpm", (1 - t) * 60 / sp.rpm)
                writes.append((st, "rpm", (t - 1, now)))
                if i == 0:
                    first.requests = (sp.rpm, int(t - 1), (sp.rpm - t + 1) * 60 / sp.rpm)
            if sp.tpm:
                cost = min(tokens, sp.tpm)
                t = refill(*st.buckets.get("tpm", (sp.tpm, now)), sp.tpm, now)
                if t < cost:
                    return Decision(False, "tpm", (cost - t) * 60 / sp.tpm)
                writes.append((st, "tpm", (t - cost, now)))
                if i == 0:
                    first.tokens = (sp.tpm, int(t - cost), (sp.tpm - t + cost) * 60 / sp.tpm)
            if sp.concurrent:
                if len(st.leases) >= sp.concurrent:
                    return Decision(False, "concurrent", 1.0)
                leases.append(st)
            if sp.tokens_per_day:
                used = st.day[1] if st.day[0] == day else 0
                if used + tokens > sp.tokens_per_day:
                    return Decision(False, "tokens_per_day", seconds_to_midnight(now))
                days.append((st, used + tokens))
        for st, dim, value in writes:
            st.buckets[dim] = value
        for st in leases:
            st.leases[lease] = now + self._lease_s
        for st, used in days:
            st.day = (day, used)
        return first

    async def settle(
        self,
        lease: str,
        charges: list[Charge],
        estimate: int,
        actual: int,
        now: float | None = None,
    ) -> None:
        now = time.time() if now is None else now
        day = int(now // DAY)
        delta = actual - estimate
        for ch in charges:
            st, sp = self._state(ch.subject), ch.spec
            st.leases.pop(lease, None)
            if sp.tpm and delta:
                t = refill(*st.buckets.get("tpm", (sp.tpm, now)), sp.tpm, now)
                st.buckets["tpm"] = (max(-sp.tpm, min(sp.tpm, t - delta)), now)
            if sp.tokens_per_day and delta and st.day[0] == day:
                st.day = (day, max(0, st.day[1] + delta))

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._s.clear()


# KEYS per charge: rpm, tpm, conc, day. ARGV: now, lease, lease_s, tokens, then per charge:
# rpm, tpm, conc, day_limit (0 = none). Returns {allowed, dim_index, retry_after*1000,
# req_remaining, tok_remaining}.
_ACQUIRE = """
local now = tonumber(ARGV[1]); local lease = ARGV[2]; local lease_s = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4]); local n = #KEYS / 4
local function bucket(key, cap)
  local v = redis.call('HMGET', key, 't', 'ts')
  local t = tonumber(v[1]) or cap; local ts = tonumber(v[2]) or now
  return math.min(cap, t + math.max(0, now - ts) * cap / 60)
end
local rem_r, rem_t = -1, -1
for i = 0, n - 1 do
  local rpm = tonumber(ARGV[5 + i*4]); local tpm = tonumber(ARGV[6 + i*4])
  local conc = tonumber(ARGV[7 + i*4]); local dl = tonumber(ARGV[8 + i*4])
  if rpm > 0 then
    local t = bucket(KEYS[1 + i*4], rpm)
    if t < 1 then return {0, 1, math.ceil((1 - t) * 60000 / rpm), 0, 0} end
    if i == 0 then rem_r = math.floor(t - 1) end
  end
  if tpm > 0 then
    local cost = math.min(tokens, tpm); local t = bucket(KEYS[2 + i*4], tpm)
    if t < cost then return {0, 2, math.ceil((cost - t) * 60000 / tpm), 0, 0} end
    if i == 0 then rem_t = math.floor(t - cost) end
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3 + i*4], '-inf', now)
    if redis.call('ZCARD', KEYS[3 + i*4]) >= conc then return {0, 3, 1000, 0, 0} end
  end
  if dl > 0 then
    local used = tonumber(redis.call('GET', KEYS[4 + i*4]) or '0')
    if used + tokens > dl then return {0, 4, math.ceil((86400 - now % 86400) * 1000), 0, 0} end
  end
end
for i = 0, n - 1 do
  local rpm = tonumber(ARGV[5 + i*4]); local tpm = tonumber(ARGV[6 + i*4])
  local conc = tonumber(ARGV[7 + i*4]); local dl = tonumber(ARGV[8 + i*4])
  if rpm > 0 then
    local t = bucket(KEYS[1 + i*4], rpm)
    redis.call('HSET', KEYS[1 + i*4], 't', t - 1, 'ts', now)
    redis.call('EXPIRE', KEYS[1 + i*4], 120)
  end
  if tpm > 0 then
    local t = bucket(KEYS[2 + i*4], tpm)
    redis.call('HSET', KEYS[2 + i*4], 't', t - math.min(tokens, tpm), 'ts', now)
    redis.call('EXPIRE', KEYS[2 + i*4], 120)
  end
  if conc > 0 then
    redis.call('ZADD', KEYS[3 + i*4], now + lease_s, lease)
    redis.call('EXPIRE', KEYS[3 + i*4], math.ceil(lease_s) + 60)
  end
  if dl > 0 then
    redis.call('INCRBY', KEYS[4 + i*4], tokens); redis.call('EXPIRE', KEYS[4 + i*4], 172800)
  end
end
return {1, 0, 0, rem_r, rem_t}
"""

# KEYS per charge as above; ARGV: now, lease, delta, then per charge: tpm, day_limit.
_SETTLE = """
local now = tonumber(ARGV[1]); local lease = ARGV[2]; local delta = tonumber(ARGV[3])
for i = 0, #KEYS / 4 - 1 do
  local tpm = tonumber(ARGV[4 + i*2]); local dl = tonumber(ARGV[5 + i*2])
  redis.call('ZREM', KEYS[3 + i*4], lease)
  if tpm > 0 and delta ~= 0 then
    local v = redis.call('HMGET', KEYS[2 + i*4], 't', 'ts')
    local t = tonumber(v[1]) or tpm; local ts = tonumber(v[2]) or now
    t = math.min(tpm, t + math.max(0, now - ts) * tpm / 60) - delta
    redis.call('HSET', KEYS[2 + i*4], 't', math.max(-tpm, math.min(tpm, t)), 'ts', now)
  end
  if dl > 0 and delta ~= 0 then redis.call('INCRBY', KEYS[4 + i*4], delta) end
end
return 1
"""

_DIMS = {1: "rpm", 2: "tpm", 3: "concurrent", 4: "tokens_per_day"}


class RedisLimitStore:
    def __init__(self, url: str, prefix: str = "gantry:limit:", lease_s: float = 900.0) -> None:
        import redis.asyncio as aioredis

        self._r = aioredis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._prefix = prefix
        self._lease_s = lease_s
        self._acquire = self._r.register_script(_ACQUIRE)
        self._settle = self._r.register_script(_SETTLE)

    def _keys(self, charges: list[Charge], now: float) -> list[str]:
        day = int(now // DAY)
        out = []
        for ch in charges:
            base = self._prefix + ch.subject
            out += [base + ":rpm", base + ":tpm", base + ":conc", f"{base}:day:{day}"]
        return out

    async def acquire(
        self, lease: str, charges: list[Charge], tokens: int, now: float | None = None
    ) -> Decision:
        import redis.exceptions

        now = time.time() if now is None else now
        args: list[float | str | int] = [now, lease, self._lease_s, tokens]
        for ch in charges:
            s = ch.spec
            args += [s.rpm or 0, s.tpm or 0, s.concurrent or 0, s.tokens_per_day or 0]
        try:
            res = await self._acquire(keys=self._keys(charges, now), args=args)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise LimitStoreUnavailable(
                f"Usage limits cannot be checked right now ({type(exc).__name__}).", retry_after=5
            ) from exc
        allowed, dim, retry_ms, rem_r, rem_t = (int(x) for x in res)
        if not allowed:
            return Decision(False, _DIMS[dim], retry_ms / 1000)
        sp = charges[0].spec if charges else LimitSpec()
        d = Decision(True)
        if sp.rpm:
            d.requests = (sp.rpm, rem_r, (sp.rpm - rem_r) * 60 / sp.rpm)
        if sp.tpm:
            d.tokens = (sp.tpm, rem_t, (sp.tpm - rem_t) * 60 / sp.tpm)
        return d

    async def settle(
        self,
        lease: str,
        charges: list[Charge],
        estimate: int,
        actual: int,
        now: float | None = None,
    ) -> None:
        import redis.exceptions

        now = time.time() if now is None else now
        args: list[float | str | int] = [now, lease, actual - estimate]
        for ch in charges:
            args += [ch.spec.tpm or 0, ch.spec.tokens_per_day or 0]
        try:
            await self._settle(keys=self._keys(charges, now), args=args)
        except (redis.exceptions.RedisError, OSError):
            pass  # leases expire by themselves; token counts drift by one request

    async def ping(self) -> bool:
        import redis.exceptions

        try:
            return bool(await self._r.ping())
        except (redis.exceptions.RedisError, OSError):
            return False

    async def aclose(self) -> None:
        await self._r.aclose()


def reset_header(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``."""
    s = max(0.0, seconds)
    if s < 60:
        return f"{math.ceil(s * 1000) / 1000:g}s"
    return f"{int(s // 60)}m{int(s % 60)}s"
