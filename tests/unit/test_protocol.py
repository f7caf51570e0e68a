from __future__ import annotations

import pytest

from gantry.protocol import (
    ENDPOINT_CHAT,
    ENDPOINT_COMPLETIONS,
    RequestShapeError,
    SSEDecoder,
    encode_data,
    flat_error_message,
    inspect_request,
)


def test_sse_decoder_handles_split_chunks_comments_and_crlf():
    d = SSEDecoder()
    stream = encode_data({"a": 1}) + b": keep-alive\n\n" + b"data: [DONE]\r\n\r\n"
    out = []
    for i in range(len(stream)):
        out.extend(d.feed(stream[i : i + 1]))
    assert out == [b'{"a":1}', b"[DONE]"]


def test_sse_decoder_bounds_its_buffer():
    d = SSEDecoder(max_event_bytes=10)
    with pytest.raises(ValueError):
        list(d.feed(b"data: " + b"x" * 100))


def test_error_shapes_are_all_readable():
    assert flat_error_message({"error": {"message": "m"}}) == "m"
    assert flat_error_message({"object": "error", "message": "old"}) == "old"
    assert flat_error_message({"error": "Unauthorized"}) == "Unauthorized"
    assert flat_error_message({"detail": "Not Found"}) == "Not Found"


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        (ENDPOINT_CHAT, [], "body"),
        (ENDPOINT_CHAT, {"model": "m"}, "messages"),
        (ENDPOINT_CHAT, {"model": "m", "messages": "hi"}, "messages"),
        (ENDPOINT_CHAT, {"model": "m", "messages": [{"content": "x"}]}, "messages"),
        (ENDPOINT_CHAT, {"model": 3, "messages": [{"role": "user"}]}, "model"),
        (ENDPOINT_CHAT, {"model": "m", "messages": [{"role": "u"}], "stream": "yes"}, "stream"),
        (ENDPOINT_COMPLETIONS, {"model": "m"}, "prompt"),
        (ENDPOINT_COMPLETIONS, {"model": "m", "prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ],
)
def test_inspect_rejects_bad_shapes(endpoint, body, param):
    with pytest.raises(RequestShapeError) as exc:
        inspect_request(endpoint, body)
    assert exc.value.param == param


def test_inspect_reads_stream_and_usage_flags():
    info = inspect_request(
        ENDPOINT_CHAT,
        {
            "model": "m",
            "messages": [{"role": "user"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert info.stream and info.include_usage and info.model == "m"
