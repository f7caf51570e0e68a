"""Idempotency records behind one interface: in memory (default) or Redis (shared by
every gateway replica).

A key moves through: absent -> busy (the first request runs) -> done (its answer is
stored until the TTL) or absent again (it failed: a repeat runs anew).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

import msgpack


class Claim(enum.Enum):
    NEW = "new"  # you run it
    DONE = "done"  # here is the stored answer
    BUSY = "busy"  # another request with this key is running
    MISMATCH = "mismatch"  # same key, different request


@dataclass(frozen=True, slots=True)
class IdemRecord:
    fingerprint: str
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stream: bool

    def pack(self) -> bytes:
        return bytes(
            msgpack.packb(
                {
                    "fp": self.fingerprint,
                    "st": self.status,
                    "h": [list(h) for h in self.headers],
                    "b": self.body,
                    "s": self.stream,
                    "state": "done",
                }
            )
        )

    @classmethod
    def unpack(cls, raw: bytes | str) -> IdemRecord | str:
        """The record, or the fingerprint of a request still running."""
        d = msgpack.unpackb(raw)
        if d.get("state") != "done":
            return str(d["fp"])
        return cls(d["fp"], int(d["st"]), tuple((k, v) for k, v in d["h"]), d["b"], d["s"])


class IdempotencyStore(Protocol):
    async def claim(
        self, key: str, fingerprint: str, ttl_s: float
    ) -> tuple[Claim, IdemRecord | None]: ...

    async def complete(self, key: str, record: IdemRecord, ttl_s: float) -> None: ...

    async def release(self, key: str) -> None: ...

    async def wait(self, key: str, timeout_s: float) -> IdemRecord | None: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    expires: float
    record: IdemRecord | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryIdempotencyStore:
    """One process. Bounded: the oldest entries go first past ``max_entries``."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._max = max_entries

    def _get(self, key: str) -> _Entry | None:
        e = self._entries.get(key)
        if e is not None and e.expires < time.monotonic():
            del self._entries[key]
            e.done.set()
            return None
        return e

    async def claim(
        self, key: str, fingerprint: str, ttl_s: float
    ) -> tuple[Claim, IdemRecord | None]:
        e = self._get(key)
        if e is None:
            while len(self._entries) >= self._max:
                _, old = self._entries.popitem(last=False)
                old.done.set()
            self._entries[key] = _Entry(fingerprint, time.monotonic() + ttl_s)
            return Claim.NEW, None
        if e.fingerprint != fingerprint:
            return Claim.MISMATCH, None
        if e.record is not None:
            return Claim.DONE, e.record
        return Claim.BUSY, None

    async def complete(self, key: str, record: IdemRecord, ttl_s: float) -> None:
        e = self._entries.get(key)
        if e is None:
            e = self._entries[key] = _Entry(record.fingerprint, 0.0)
        e.record, e.expires = record, time.monotonic() + ttl_s
        e.done.set()

    async def release(self, key: str) -> None:
        e = self._entries.pop(key, None)
        if e is not None:
            e.done.set()

    async def wait(self, key: str, timeout_s: float) -> IdemRecord | None:
        e = self._get(key)
        if e is None:
            return None
        try:
            await asyncio.wait_for(e.done.wait(), timeout_s)
        except TimeoutError:
            return None
        return e.record

    async def aclose(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class RedisIdempotencyStore:
    """Shared by all replicas: ``SET NX PX`` claims, waiters poll every 50 ms."""

    def __init__(self, url: str, prefix: str = "gantry:idem:") -> None:
        import redis.asyncio as aioredis

        self._r = aioredis.from_url(url)
        self._prefix = prefix

    async def claim(
        self, key: str, fingerprint: str, ttl_s: float
    ) -> tuple[Claim, IdemRecord | None]:
        k = self._prefix + key
        busy = msgpack.packb({"fp": fingerprint, "state": "busy"})
        if await self._r.set(k, busy, nx=True, px=int(ttl_s * 1000)):
            return Claim.NEW, None
        raw = await self._r.get(k)
        if raw is None:  # expired between the two calls
            return await self.claim(key, fingerprint, ttl_s)
        got = IdemRecord.unpack(raw)
        fp = got if isinstance(got, str) else got.fingerprint
        if fp != fingerprint:
            return Claim.MISMATCH, None
        return (Claim.BUSY, None) if isinstance(got, str) else (Claim.DONE, got)

    async def complete(self, key: str, record: IdemRecord, ttl_s: float) -> None:
        await self._r.set(self._prefix + key, record.pack(), px=int(ttl_s * 1000))

    async def release(self, key: str) -> None:
        await self._r.delete(self._prefix + key)

    async def wait(self, key: str, timeout_s: float) -> IdemRecord | None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            raw = await self._r.get(self._prefix + key)
            if raw is None:
                return None
            got = IdemRecord.unpack(raw)
            if not isinstance(got, str):
                return got
            await asyncio.sleep(0.05)
        return None

    async def aclose(self) -> None:
        await self._r.aclose()
