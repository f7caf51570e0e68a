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
from collections.abc import AsyncIterator, Awaitable, Callable
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
    for ev in events.split(b"\n\n"):
        if ev.startswith(b"data: {") and b'"role"' not in ev and b'"choices":[]' not in ev:
            return True
    return False


def _take_usage(events: bytes, stats: StreamStats, keep: bool) -> bytes:
    pos = events.find(b'"choices":[]')
    start = events.rfind(b"data: ", 0, pos)
    end = events.find(b"\n\n", pos)
    if start < 0 or end < 0:
        return events
    read_usage(events[start + 6 : end], stats)
    return events if keep else events[:start] + events[end + 2 :]


class FailedBeforeFirstToken(Exception):
    """The engine failed before any token reached the client: safe to retry elsewhere."""


async def relay(
    chunks: AsyncIterator[bytes],
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
    """Copy whole SSE events from ``chunks`` to ``write`` as raw bytes.

    Reads are cut at the last event boundary (the rest is carried to the next read),
    so the client only ever sees complete events; only the usage event is touched.
    Per-event decoding would cost ~3 us an event; this costs a few scans per read.

    Before the first token, any failure (timeout, dropped connection, error event)
    raises ``FailedBeforeFirstToken`` and writes nothing but keep-alive comments. After
    it, failures end the stream with an SSE error event and ``[DONE]``.
    """
    it = chunks.__aiter__()
    waiting_first = True
    carry = b""
    start = last = time.perf_counter()
    loop_start = time.monotonic()
    while True:
        try:
            if waiting_first:
                limit = min(ttft_s, deadline - loop_start) - (time.perf_counter() - start)
                chunk = await _next_with_keepalive(it, keepalive_s, write, limit)
            else:
                chunk = await asyncio.wait_for(
                    it.__anext__(), min(idle_s, deadline - time.monotonic())
                )
        except StopAsyncIteration:
            break
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
        if b'"choices":[]' in events:
            events = _take_usage(events, stats, pass_usage)
        if b"data: [DONE]" in events:
            stats.saw_done = True
            events = events.replace(b"data: [DONE]\n\n", b"")
        if b'data: {"error"' in events or b'data: {"object":"error"' in events:
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
        await write(encode_done())
    elif waiting_first:
        raise FailedBeforeFirstToken("engine closed the stream before the first token")
    else:
        stats.error = stats.error or "engine closed the stream early"
        await write(error_event(stats.error) + encode_done())


async def _next_with_keepalive(
    it: AsyncIterator[bytes], interval: float, write: WriteFn, limit: float
) -> bytes:
    """The next chunk; ``: keep-alive`` comments every ``interval`` while waiting."""
    if limit <= 0:
        raise TimeoutError
    if interval <= 0 or interval >= limit:
        return await asyncio.wait_for(it.__anext__(), limit)
    nxt = asyncio.ensure_future(it.__anext__())
    end = time.perf_counter() + limit
    try:
        while True:
            left = end - time.perf_counter()
            if left <= 0:
                raise TimeoutError
            done, _ = await asyncio.wait({nxt}, timeout=min(interval, left))
            if done:
                return nxt.result()
            await write(_KEEPALIVE)
    finally:
        if not nxt.done():
            nxt.cancel()
