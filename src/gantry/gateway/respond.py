"""Respond: send an engine's opened answer to the client.

Non-streaming answers go out whole, renamed to the alias the client used. Streams
start (unless keep-alives already started them), send the events held up to the first
token, and relay the rest; a failure after that raises, and the one error mapper
(``failures``) turns it into an SSE error event.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from gantry.errors import EngineError
from gantry.gateway.accounting import Record
from gantry.gateway.dispatch import Opened, Outcome
from gantry.gateway.http import Exchange
from gantry.gateway.prepare import Prepared
from gantry.gateway.relay import relay_rest
from gantry.protocol import usage_of_body


class StreamBroken(EngineError):
    """The engine's stream failed after the first token."""


def unary(x: Exchange, o: Opened, p: Prepared, rec: Record) -> Outcome:
    data = o.body
    rec.usage = usage_of_body(data)
    if p.requested != p.model and o.model == p.model:  # an alias (not a fallback)
        data = _rename(data, o.model, p.requested)
    x.reply(o.status, data, _ctype(o))
    rec.status = o.status
    return Outcome.OK


async def stream(
    x: Exchange,
    o: Opened,
    p: Prepared,
    rec: Record,
    *,
    idle_s: float,
    deadline: float,
    itl_observe: Callable[[float], None] | None,
) -> Outcome:
    state, resp = o.stream, o.response
    assert state is not None and resp is not None
    rec.first_token_at = state.first_token_at
    if not x.started:
        x.start_stream(o.status)
    rec.status = o.status
    if state.saw_done:  # the whole stream came with the first token (one write)
        resp.close()
        rec.usage = state.usage
        x.end_stream(o.first)
        if state.error is not None:  # the engine's error event went out as it came
            rec.status, rec.error = 502, state.error
            return Outcome.FAILED
        return Outcome.OK
    try:
        await x.write(o.first)
        await relay_rest(
            resp.next_chunk,
            x.write,
            state,
            idle_s=idle_s,
            deadline=deadline,
            itl_observe=itl_observe,
        )
    except TimeoutError:
        rec.usage = state.usage
        raise
    except (EngineError, OSError, ValueError) as exc:
        rec.usage = state.usage
        if x.gone:
            return Outcome.ABANDONED
        raise StreamBroken(f"The engine's stream broke ({type(exc).__name__}).") from exc
    finally:
        resp.close()
    rec.usage = state.usage
    if state.error is not None and not state.saw_done:
        raise StreamBroken(state.error)
    if state.error is not None:  # the engine's error event was relayed as it came
        rec.status, rec.error = 502, state.error
        x.end_stream()
        return Outcome.FAILED
    x.end_stream()
    return Outcome.OK


def _ctype(o: Opened) -> bytes:
    ct = o.headers.get("content-type")
    return ct.encode("latin-1") if ct else b"application/json"


def _rename(data: bytes, served: str, requested: str) -> bytes:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    if isinstance(parsed, dict) and parsed.get("model") == served:
        parsed["model"] = requested
        return orjson.dumps(parsed)
    return data
