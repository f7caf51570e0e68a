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

from gantry.protocol import DONE, SSEDecoder, encode_comment, encode_done, error_body

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


async def relay(
    chunks: AsyncIterator[bytes],
    write: WriteFn,
    stats: StreamStats,
    *,
    pass_usage: bool,
    keepalive_s: float,
    idle_timeout_s: float | None,
    itl_observe: ObserveFn | None = None,
) -> None:
    """Copy events from ``chunks`` to ``write``; raises only for the caller's cleanup."""
    decoder = SSEDecoder()
    it = chunks.__aiter__()
    waiting_first = True
    last = time.perf_counter()
    while True:
        try:
            if waiting_first and keepalive_s > 0:
                chunk = await _next_with_keepalive(it, keepalive_s, write)
            elif idle_timeout_s:
                chunk = await asyncio.wait_for(it.__anext__(), idle_timeout_s)
            else:
                chunk = await it.__anext__()
        except StopAsyncIteration:
            break
        except TimeoutError:
            stats.error = "engine stopped sending (idle timeout)"
            await write(error_event(stats.error, "timeout_error", 504) + encode_done())
            return
        out = []
        for payload in decoder.feed(chunk):
            if payload == DONE:
                stats.saw_done = True
                continue
            if payload.startswith(b'{"error"') or payload.startswith(b'{"object":"error"'):
                stats.error = "engine reported an error mid-stream"
                out.append(b"data: " + payload + b"\n\n")
                continue
            if b'"choices":[]' in payload:  # the usage chunk
                read_usage(payload, stats)
                if not pass_usage:
                    continue
            elif waiting_first and b'"role"' not in payload:
                waiting_first = False
                stats.first_token_at = time.perf_counter()
            stats.chunks += 1
            out.append(b"data: " + payload + b"\n\n")
        if out:
            now = time.perf_counter()
            if itl_observe is not None and not waiting_first and stats.chunks > 1:
                itl_observe(now - last)
            last = now
            await write(b"".join(out))
    if stats.saw_done:
        await write(encode_done())
    else:
        stats.error = stats.error or "engine closed the stream early"
        await write(error_event(stats.error) + encode_done())


async def _next_with_keepalive(it: AsyncIterator[bytes], interval: float, write: WriteFn) -> bytes:
    nxt = asyncio.ensure_future(it.__anext__())
    try:
        while True:
            done, _ = await asyncio.wait({nxt}, timeout=interval)
            if done:
                return nxt.result()
            await write(_KEEPALIVE)
    finally:
        if not nxt.done():
            nxt.cancel()

