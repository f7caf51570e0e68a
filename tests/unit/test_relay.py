"""The SSE relay's decisions, table-driven: compact (vLLM) and pretty-printed engines."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from gantry.errors import FailedBeforeFirstToken
from gantry.gateway.relay import (
    StreamState,
    cut,
    first_token,
    has_done,
    joined,
    process,
    relay_rest,
    renamer,
)


def ev(obj: object, *, pretty: bool = False) -> bytes:
    opt = orjson.OPT_INDENT_2 if pretty else 0
    data = orjson.dumps(obj, option=opt)
    if pretty:
        data = data.replace(b'":', b'" :').replace(b"\n", b" ")  # spaces everywhere
    return b"data: " + data + b"\n\n"


def chunk(content: str | None = None, *, role: bool = False, finish: str | None = None) -> dict:
    delta: dict[str, object] = {}
    if role:
        delta = {"role": "assistant", "content": ""}
    elif content is not None:
        delta = {"content": content}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "served",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE = {
    "id": "c1",
    "object": "chat.completion.chunk",
    "model": "served",
    "choices": [],
    "usage": {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 4},
    },
}
ERROR = {"error": {"message": "boom", "type": "internal_error", "code": 500}}
DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "pretty"])
@pytest.mark.parametrize("pass_usage", [False, True], ids=["usage-hidden", "usage-asked"])
def test_whole_stream_in_one_read(pretty, pass_usage):
    body = (
        ev(chunk(role=True), pretty=pretty)
        + ev(chunk("Hel"), pretty=pretty)
        + ev(chunk("lo", finish="stop"), pretty=pretty)
        + ev(USAGE, pretty=pretty)
        + DONE
    )
    s = StreamState(pass_usage=pass_usage)
    out = pj(s, cut(s, body))
    assert s.first_token_at is not None and s.saw_done and s.error is None
    assert s.usage is not None
    assert (s.usage.prompt_tokens, s.usage.completion_tokens, s.usage.cached_tokens) == (7, 3, 4)
    assert (b'"usage"' in out) is pass_usage
    assert out.endswith(DONE) and out.count(b"\n\n") == (5 if pass_usage else 4)


@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "pretty"])
def test_event_by_event(pretty):
    s = StreamState()
    sent = b""
    parts = [
        ev(chunk(role=True), pretty=pretty),
        ev(chunk("a"), pretty=pretty),
        ev(chunk("b", finish="length"), pretty=pretty),
        ev(USAGE, pretty=pretty),
        DONE,
    ]
    for p in parts:
        for piece in (p[:7], p[7:]):  # events split across reads
            sent += pj(s, cut(s, piece))
    assert s.saw_done and s.usage is not None and s.usage.completion_tokens == 3
    assert b'"usage"' not in sent and sent.endswith(DONE)


def test_role_chunk_alone_is_not_a_token_and_error_before_token_is_retryable():
    s = StreamState()
    assert pj(s, ev(chunk(role=True))) and s.first_token_at is None
    with pytest.raises(FailedBeforeFirstToken):
        pj(s, ev(ERROR))


def test_error_after_first_token_is_noted_and_relayed():
    s = StreamState()
    pj(s, ev(chunk("x")))
    out = pj(s, ev(ERROR) + DONE)
    assert s.error and b'"boom"' in out and s.saw_done


def test_text_that_says_usage_or_error_is_just_text():
    s = StreamState()
    out = pj(s, ev(chunk("x")) + ev(chunk('"usage" and "error"')))
    assert s.error is None and s.usage is None and out.count(b"data: ") == 2


def test_continuous_usage_keeps_the_last_figures():
    s = StreamState()
    c1 = chunk("a") | {"usage": {"prompt_tokens": 5, "completion_tokens": 1}}
    c2 = chunk("b") | {"usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    out = pj(s, ev(c1) + ev(c2))
    assert s.usage is not None and s.usage.completion_tokens == 2
    assert out.count(b'"usage"') == 2  # chunks with choices are never dropped


@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "pretty"])
def test_alias_replaces_the_served_name(pretty):
    s = StreamState(rename=renamer("served", "gpt-4"))
    out = pj(s, ev(chunk("a"), pretty=pretty) + DONE)
    assert b'"served"' not in out and b'"gpt-4"' in out


@pytest.mark.parametrize(
    ("events", "done"),
    [
        (b"data: [DONE]\n\n", True),
        (b"data:[DONE]\n\n", True),
        (b'data: {"x": "[DONE]"}\n\n', False),
        (b"data: {}\n\n", False),
    ],
)
def test_done_marker(events, done):
    assert has_done(events) is done


def test_crlf_and_carry():
    s = StreamState()
    assert cut(s, b'data: {"a": 1}\r\n\r\ndata: {') == b'data: {"a": 1}\n\n'
    assert s.carry == b"data: {"


def pj(s: StreamState, events: bytes) -> bytes:
    return joined(process(s, events))


class Engine:
    def __init__(self, pieces: list[bytes | BaseException], *, delay: float = 0.0) -> None:
        self.pieces = list(pieces)
        self.delay = delay

    async def next_chunk(self) -> bytes | None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if not self.pieces:
            return None
        p = self.pieces.pop(0)
        if isinstance(p, BaseException):
            raise p
        return p


async def _noop() -> None:
    return None


@pytest.mark.parametrize(
    ("pieces", "why"),
    [
        ([ConnectionResetError()], "failed"),
        ([ev(chunk(role=True))], "closed the stream"),
        ([ev(chunk(role=True)), ev(ERROR)], "reported an error"),
    ],
)
def test_first_token_failures_are_retryable(pieces, why):
    async def main() -> None:
        with pytest.raises(FailedBeforeFirstToken, match=why):
            await first_token(
                Engine(pieces).next_chunk,
                StreamState(),
                keepalive=_noop,
                keepalive_s=1,
                limit_s=5,
            )

    asyncio.run(main())


def test_first_token_times_out_with_keepalives():
    async def main() -> None:
        beats = 0

        async def keepalive() -> None:
            nonlocal beats
            beats += 1

        with pytest.raises(FailedBeforeFirstToken, match="no first token"):
            await first_token(
                Engine([], delay=10).next_chunk,
                StreamState(),
                keepalive=keepalive,
                keepalive_s=0.01,
                limit_s=0.1,
            )
        assert beats >= 2

    asyncio.run(main())


def test_relay_rest_forwards_and_notices_an_early_end():
    async def main() -> None:
        s = StreamState()
        held = await first_token(
            Engine([ev(chunk(role=True)) + ev(chunk("a"))]).next_chunk,
            s,
            keepalive=_noop,
            keepalive_s=1,
            limit_s=5,
        )
        assert joined(held).count(b"data: ") == 2
        out: list[bytes] = []

        async def write(parts: list) -> None:
            out.append(joined(parts))

        await relay_rest(
            Engine([ev(chunk("b"))]).next_chunk, write, s, idle_s=5, deadline=time.monotonic() + 9
        )
        assert out and s.error == "the engine closed the stream early"

    asyncio.run(main())


def test_relay_rest_idle_timeout():
    async def main() -> None:
        s = StreamState()
        s.first_token_at = 1.0

        async def write(parts: list) -> None:
            return None

        with pytest.raises(TimeoutError):
            await relay_rest(
                Engine([], delay=10).next_chunk,
                write,
                s,
                idle_s=0.05,
                deadline=time.monotonic() + 9,
            )

    asyncio.run(main())
