"""Server-sent events as vLLM writes them: ``data: <json>\\n\\n`` and ``data: [DONE]``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

DONE = b"[DONE]"
_DONE_EVENT = b"data: [DONE]\n\n"


def encode_data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def encode_done() -> bytes:
    return _DONE_EVENT


def encode_comment(text: str = "keep-alive") -> bytes:
    return b": " + text.encode() + b"\n\n"


class SSEDecoder:
    """Incremental decoder: feed bytes as they arrive, get complete ``data`` payloads.

    Comment lines (``:``) are dropped; ``event:``/``id:`` lines are ignored. Each
    yielded value is the raw data payload (``b"[DONE]"`` included) so callers can
    relay bytes without re-encoding. The buffer is bounded by ``max_event_bytes``.
    """

    __slots__ = ("_buf", "_max")

    def __init__(self, max_event_bytes: int = 8 * 1024 * 1024) -> None:
        self._buf = b""
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            block = buf[start:end]
            start = end + 2
            payload = event_data(block)
            if payload is not None:
                yield payload
        self._buf = buf[start:]
        if len(self._buf) > self._max:
            self._buf = b""
            raise ValueError("SSE event larger than the configured limit")

    @property
    def pending(self) -> bytes:
        return self._buf


def event_data(block: bytes) -> bytes | None:
    """The data payload of one event (its ``data:`` lines joined), None if it has none."""
    if block.startswith(b"data: ") and b"\n" not in block:
        return block[6:]
    parts = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None
