"""Relay an engine's SSE stream to the client as it arrives.

* chunks are forwarded at once (no buffering beyond one network read);
* ``: keep-alive`` comments go out while waiting for the first token;
* the usage chunk (always requested from the engine) is passed on only when the
  client asked for it, and read for accounting either way;
* once the first byte is out, a failure becomes an SSE error event and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from gantry.protocol import encode_comment, encode_done, error_body

_KEEPALIVE = encode_comment("keep-alive")
WriteFn = Callable[[bytes], Awaitable[None]]
ObserveFn = Callable[[float], None]


@dataclass(slots=True)
class StreamStats:
    first_token_at: float | None = None
    chunks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    saw_done: bool = False
    error: str | None = None


def read_usage(payload: bytes, stats: StreamStats) -> None:
    try:
        usage = orjson.loads(payload).get("usage") or {}
    except orjson.JSONDecodeError:
        return
    stats.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    stats.completion_tokens = int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details") or {}
    stats.cached_tokens = int(details.get("cached_tokens") or 0)


def error_event(message: str, type_: str = "upstream_error", code: int = 502) -> bytes:
    return b"data: " + orjson.dumps(error_body(message, type_, code=code)) + b"\n\n"


_MAX_CARRY = 8 * 1024 * 1024  # an SSE event larger than this is an engine fault


def _first_token(events: bytes) -> bool:
    """Does this run of events hold a token (not only the chat role chunk)?"""
    i = 0
    while True:
        j = events.find(b"\n\n", i)
        if j < 0:
            return False
        ev = events[i:j]
        if ev.startswith(b"data: {") and b'"role"' not in ev and b'"choices":[]' not in ev:
            return True
        i = j + 2


def _take_usage(events: bytes, pos: int, stats: StreamStats, keep: bool) -> bytes:
    start = events.rfind(b"data: ", 0, pos)
    end = events.find(b"\n\n", pos)
    if start < 0 or end < 0:
        return events
    read_usage(events[start + 6 : end], stats)
    return events if keep else events[:start] + events[end + 2 :]


class FailedBeforeFirstToken(Exception):
    """The engine failed before any token reached the client: safe to retry elsewhere."""


NextChunk = Callable[[], Awaitable[bytes | None]]


async def _first_chunk(
    next_chunk: NextChunk, keepalive_s: float, limit_s: float, write: WriteFn
) -> bytes | None:
    """Wait for the first chunk, writing ``: keep-alive`` every ``keepalive_s``."""
    end = time.monotonic() + limit_s
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError
        tick = min(keepalive_s, left) if keepalive_s > 0 else left
        try:
            async with asyncio.timeout(tick):
                return await next_chunk()
        except TimeoutError:
            if time.monotonic() >= end:
                raise
            await write(_KEEPALIVE)


async def relay(
    next_chunk: NextChunk,
    write: WriteFn,
    stats: StreamStats,
    *,
    pass_usage: bool,
    keepalive_s: float,
    ttft_s: float,
    idle_s: float,
    deadline: float,
    itl_observe: ObserveFn | None = None,
) -> None:
    """Copy whole SSE events from the engine to ``write`` as raw bytes.

    Reads are cut at the last event boundary (the rest is carried to the next read),
    so the client only ever sees complete events; only the usage event is touched.
    Per-event decoding would cost ~3 us an event; this costs a few scans per read, and
    timeouts are timer handles (``asyncio.timeout``), not a task per read.

    Before the first token, any failure (timeout, dropped connection, error event)
    raises ``FailedBeforeFirstToken`` and writes nothing but keep-alive comments. After
    it, failures end the stream with an SSE error event and ``[DONE]``.
    """
    waiting_first = True
    carry = b""
    last = time.perf_counter()
    t0 = time.monotonic()
    while True:
        try:
            if waiting_first:
                limit = min(ttft_s, deadline - t0) - (time.monotonic() - t0)
                chunk = await _first_chunk(next_chunk, keepalive_s, limit, write)
            else:
                async with asyncio.timeout(min(idle_s, deadline - time.monotonic())):
                    chunk = await next_chunk()
        except TimeoutError:
            if waiting_first:
                raise FailedBeforeFirstToken("no first token in time") from None
            stats.error = "engine stopped sending (timeout)"
            await write(error_event(stats.error, "timeout_error", 504) + encode_done())
            return
        except Exception as exc:
            if waiting_first:
                raise FailedBeforeFirstToken(type(exc).__name__) from exc
            raise
        if chunk is None:
            break
        data = carry + chunk if carry else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        cut = data.rfind(b"\n\n")
        if cut < 0:
            carry = data
            if len(carry) > _MAX_CARRY:
                raise ValueError("SSE event larger than the limit")
            continue
        events, carry = data[: cut + 2], data[cut + 2 :]
        pos = events.rfind(b'"choices":[]')  # the usage event comes last
        if pos >= 0:
            events = _take_usage(events, pos, stats, pass_usage)
        if events.endswith(b"data: [DONE]\n\n"):
            stats.saw_done = True
        if b'"error"' in events and (
            b'data: {"error"' in events or b'data: {"object":"error"' in events
        ):
            if waiting_first and not _first_token(events):
                raise FailedBeforeFirstToken("engine reported an error")
            stats.error = "engine reported an error mid-stream"
        now = time.perf_counter()
        if waiting_first and _first_token(events):
            waiting_first = False
            stats.first_token_at = now
        elif itl_observe is not None and not waiting_first:
            itl_observe(now - last)
        last = now
        if events:
            stats.chunks += 1
            await write(events)
        if stats.saw_done:
            return
    if waiting_first:
        raise FailedBeforeFirstToken("engine closed the stream before the first token")
    stats.error = stats.error or "engine closed the stream early"
    await write(error_event(stats.error) + encode_done())
