"""Relay an engine's SSE stream: whole events, forwarded as raw bytes as they arrive.

Each network read is cut at its last event boundary (the rest waits for the next read),
so the client only ever sees complete events. Reads are forwarded untouched unless one
of them needs attention, found with a byte search and then decided by parsing only the
events concerned (so an engine that pretty-prints its JSON is read as well as vLLM's
compact output):

* the usage event (always requested from the engine, for accounting) is passed on only
  when the client asked for it;
* an error event is noticed (before the first token it makes the attempt retryable);
* ``[DONE]`` ends the stream;
* behind a model alias, the served model name is replaced by the alias in every event.

Before the first token, events (the chat role chunk) are held back, so a failing
engine can be replaced by another without the client seeing anything but keep-alive
comments.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gantry.errors import FailedBeforeFirstToken
from gantry.protocol import Usage, encode_comment, event_data, usage_of

_KEEPALIVE = encode_comment("keep-alive")
_MAX_CARRY = 8 * 1024 * 1024  # an SSE event larger than this is an engine fault
_TAIL_EVENTS = 3  # the usage chunk, an error event, [DONE]
NextChunk = Callable[[], Awaitable[bytes | None]]
Parts = list[bytes | memoryview]  # pieces written together (writev), never joined here
WriteFn = Callable[[Parts], Awaitable[None]]


@dataclass(slots=True)
class StreamState:
    """What the relay learnt about one stream."""

    pass_usage: bool = False  # the client asked for the usage chunk
    rename: tuple[re.Pattern[bytes], bytes] | None = None  # served name -> alias
    carry: bytes = b""
    crlf: bool | None = None  # the engine ends lines with CRLF (None: not known yet)
    held: Parts = field(default_factory=list)  # events before the first token
    first_token_at: float | None = None
    usage: Usage | None = None
    saw_done: bool = False
    error: str | None = None  # the engine reported an error mid-stream
    reads: int = 0


def renamer(served: str, alias: str) -> tuple[re.Pattern[bytes], bytes]:
    """Replace ``"model": "<served>"`` (any spacing) by the alias the client used."""
    pattern = re.compile(rb'"model"(\s*):(\s*)"' + re.escape(served.encode()) + rb'"')
    return pattern, rb'"model"\1:\2"' + orjson.dumps(alias)[1:-1] + rb'"'


def cut(state: StreamState, chunk: bytes) -> bytes:
    """The complete events in carry + chunk; keeps the incomplete rest in ``carry``."""
    data = state.carry + chunk if state.carry else chunk
    if state.crlf is None:  # the first line tells: looking once costs less than a scan a read
        nl = data.find(b"\n")
        if nl >= 0:
            state.crlf = nl > 0 and data[nl - 1] == 13
    if state.crlf or (state.crlf is None and b"\r" in data):
        data = data.replace(b"\r\n", b"\n")
    end = data.rfind(b"\n\n")
    if end < 0:
        state.carry = data
        if len(data) > _MAX_CARRY:
            raise ValueError("SSE event larger than the limit")
        return b""
    state.carry = data[end + 2 :]
    return data[: end + 2]


def is_error(obj: Any) -> bool:
    """An error event: OpenAI's ``{"error": ...}`` or the old ``{"object": "error"}``."""
    return isinstance(obj, dict) and (
        obj.get("object") == "error" or ("error" in obj and "choices" not in obj)
    )


def is_token(obj: Any) -> bool:
    """A chunk that carries output (not the chat role chunk, not the usage chunk)."""
    if not isinstance(obj, dict):
        return False
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    for c in choices:
        if not isinstance(c, dict):
            continue
        if c.get("finish_reason") is not None or c.get("text"):
            return True
        delta = c.get("delta")
        if isinstance(delta, dict):
            for k, v in delta.items():
                if k != "role" and v:  # content, tool_calls, reasoning...
                    return True
    return False


def process(state: StreamState, events: bytes) -> Parts:
    """Decide what of a run of complete events goes to the client, as parts to write.

    Costs a few byte searches per read; only the events that need a decision are parsed:
    those before the first token, and those near the end of the read. The bulk of a read
    goes out as a memoryview of it (a read can hold a whole stream: each copy of it cost
    a few microseconds)."""
    if state.rename is not None:
        events = state.rename[0].sub(state.rename[1], events)
    out: Parts = []
    pos = 0
    if state.first_token_at is None:
        pos = _until_first_token(state, events, out)
        if pos >= len(events):
            return out
    # The usage chunk, an error event and [DONE] end a stream: only the last events of a
    # read are searched (scanning all of a large read for these markers cost more than
    # everything else the relay does).
    cut_at = max(pos, _tail_start(events, _TAIL_EVENTS))
    if cut_at > pos:
        out.append(memoryview(events)[pos:cut_at])
    tail = events[cut_at:] if cut_at else events
    u = tail.find(b'"usage"')
    e = tail.find(b'"error"')
    if u >= 0 or e >= 0:
        tail = _marked(state, tail, u, e)
    if tail.endswith(b"data: [DONE]\n\n") or (b"[DONE]" in tail and has_done(tail)):
        state.saw_done = True
    if tail:
        out.append(tail)
    return out


def joined(parts: Parts) -> bytes:
    return b"".join(parts)


def _tail_start(events: bytes, n: int) -> int:
    """Where the last ``n`` events of ``events`` (which ends with a blank line) begin."""
    end = len(events) - 2
    for _ in range(n):
        end = events.rfind(b"\n\n", 0, end)
        if end < 0:
            return 0
    return end + 2


def has_done(events: bytes) -> bool:
    """Is there a ``data: [DONE]`` line (``data:[DONE]`` too) in these events?"""
    i = events.find(b"[DONE]")
    while i >= 0:
        line = events.rfind(b"\n", 0, i) + 1
        if events[line:i].rstrip() == b"data:":
            return True
        i = events.find(b"[DONE]", i + 6)
    return False


def _until_first_token(state: StreamState, events: bytes, out: Parts) -> int:
    """Decide event by event up to the first token; returns where the rest begins."""
    pos = 0
    while state.first_token_at is None:
        end = events.find(b"\n\n", pos)
        if end < 0:
            break
        decided = _decide(state, events[pos:end])
        if decided:
            out.append(decided)
        pos = end + 2
    return pos


def _marked(state: StreamState, events: bytes, u: int, e: int) -> bytes:
    """Decide the events that mention usage or error (first ones at ``u``, ``e``; -1 if
    none); keep the others as they are."""
    out = []
    pos = 0
    n = len(events)
    while pos < n:
        if 0 <= u < pos:
            u = events.find(b'"usage"', pos)
        if 0 <= e < pos:
            e = events.find(b'"error"', pos)
        i = min(u, e) if u >= 0 and e >= 0 else max(u, e)
        if i < 0:
            out.append(events[pos:])
            break
        prev = events.rfind(b"\n\n", pos, i)  # the end of the event before
        start = prev + 2 if prev >= 0 else pos
        end = events.find(b"\n\n", i)
        end = n if end < 0 else end + 2
        out.append(events[pos:start])
        out.append(_decide(state, events[start:end].rstrip(b"\n")))
        pos = end
    return b"".join(out)


def _decide(state: StreamState, ev: bytes) -> bytes:
    """One event (without its blank line): what to forward of it (maybe nothing)."""
    if not ev:
        return b""
    data = event_data(ev)
    if data is None or data == b"[DONE]":  # comments, other fields, the end marker
        return ev + b"\n\n"
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ev + b"\n\n"
    if is_error(obj):
        if state.first_token_at is None:
            raise FailedBeforeFirstToken("the engine reported an error before any token")
        state.error = "the engine reported an error mid-stream"
        return ev + b"\n\n"
    u = usage_of(obj)
    if u is not None:
        state.usage = u
        if not obj.get("choices") and not state.pass_usage:
            return b""  # the usage-only chunk the client did not ask for
    if state.first_token_at is None and is_token(obj):
        state.first_token_at = time.perf_counter()
    return ev + b"\n\n"


async def first_token(
    next_chunk: NextChunk,
    state: StreamState,
    *,
    keepalive: Callable[[], Awaitable[None]],
    keepalive_s: float,
    limit_s: float,
    buffered: Callable[[], bytes | None] | None = None,
) -> Parts:
    """Read until the first token; return the events to send with it.

    ``buffered`` (optional) returns what the engine already sent without waiting: a
    read that is already there needs no timer (~4 us saved a stream).

    Raises ``FailedBeforeFirstToken`` on a timeout, a dropped connection, an error
    event, or a stream that ends first: nothing but keep-alives reached the client.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while True:
        chunk = buffered() if buffered is not None else None
        if chunk is not None:
            pass
        elif (left := end - loop.time()) <= 0:
            raise FailedBeforeFirstToken(f"no first token within {limit_s:g}s")
        else:
            try:
                chunk = await _within(
                    next_chunk, min(keepalive_s, left) if keepalive_s > 0 else left
                )
            except TimeoutError:
                if loop.time() < end:
                    await keepalive()
                continue
            except FailedBeforeFirstToken:
                raise
            except Exception as exc:
                raise FailedBeforeFirstToken(f"the engine failed ({type(exc).__name__})") from exc
            if chunk is None:
                raise FailedBeforeFirstToken("the engine closed the stream before any token")
        try:
            events = cut(state, chunk)
        except ValueError as exc:
            raise FailedBeforeFirstToken(str(exc)) from exc
        if not events:
            continue
        state.reads += 1
        state.held += process(state, events)
        if state.first_token_at is not None or state.saw_done:
            held, state.held = state.held, []
            return held


async def _within(next_chunk: NextChunk, seconds: float) -> bytes | None:
    async with asyncio.timeout(seconds):
        return await next_chunk()


async def relay_rest(
    next_chunk: NextChunk,
    write: WriteFn,
    state: StreamState,
    *,
    idle_s: float,
    deadline: float,
    itl_observe: Callable[[float], None] | None = None,
) -> None:
    """Forward the rest of the stream. Ends normally at ``[DONE]``; raises
    ``TimeoutError`` when the engine goes quiet for ``idle_s`` or the deadline passes,
    and the transport's error if the connection breaks (the caller turns either into an
    SSE error event)."""
    if state.saw_done:
        return
    loop = asyncio.get_running_loop()
    last = time.perf_counter()
    # One timer for the whole relay, moved after every read (cheaper than one per read).
    async with asyncio.timeout(None) as tmo:
        while True:
            tmo.reschedule(min(loop.time() + idle_s, loop.time() + deadline - time.monotonic()))
            chunk = await next_chunk()
            if chunk is None:
                state.error = state.error or "the engine closed the stream early"
                return
            events = cut(state, chunk)
            if not events:
                continue
            state.reads += 1
            forward = process(state, events)
            now = time.perf_counter()
            if itl_observe is not None:
                itl_observe(now - last)
            last = now
            if forward:
                await write(forward)
            if state.saw_done:
                return
