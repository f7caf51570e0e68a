"""An engine in memory: a handler function answers each request.

Like httpx's ``MockTransport``: ``MemoryTransport(handler)`` implements the
``EngineTransport`` seam, so the pool, dispatch, retries and the relay run unchanged
against engines that a test (or a benchmark) describes as a function, with no process
and no socket. The handler gets the ``EngineRequest`` and returns a ``MemoryResponse``
(or raises, e.g. ``RetryableEngineError`` for a refused connection). A response body is
bytes, or chunks: a list, or an async iterator that may pause or raise part-way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import orjson

from gantry.engines.transport import EngineRequest, EngineResponse

Handler = Callable[[EngineRequest], "MemoryResponse | Awaitable[MemoryResponse]"]


class MemoryResponse:
    __slots__ = ("_aiter", "_iter", "closed", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes | None = None,
        *,
        chunks: Iterable[bytes] | AsyncIterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.headers: Mapping[str, str] = dict(headers or {})
        if chunks is None:
            chunks = [body] if body else []
        self._aiter: Any = chunks.__aiter__() if hasattr(chunks, "__aiter__") else None
        self._iter: Any = None if self._aiter is not None else iter(chunks)  # type: ignore[arg-type]
        self.closed = False

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> MemoryResponse:
        return cls(status, orjson.dumps(obj), headers={"content-type": "application/json"})

    @classmethod
    def sse(
        cls, chunks: Iterable[bytes] | AsyncIterator[bytes], status: int = 200
    ) -> MemoryResponse:
        return cls(status, chunks=chunks, headers={"content-type": "text/event-stream"})

    async def next_chunk(self) -> bytes | None:
        if self.closed:
            raise ConnectionResetError("response closed")
        if self._aiter is not None:
            try:
                return bytes(await self._aiter.__anext__())
            except StopAsyncIteration:
                return None
        return next(self._iter, None)

    async def read(self) -> bytes:
        parts = []
        try:
            while (piece := await self.next_chunk()) is not None:
                parts.append(piece)
        finally:
            self.close()
        return b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while (piece := await self.next_chunk()) is not None:
            yield piece

    def close(self) -> None:
        self.closed = True


class MemoryTransport:
    """``EngineTransport`` over a handler function; records the requests it got."""

    def __init__(self, handler: Handler, *, keep: int = 1000) -> None:
        self.handler = handler
        self.requests: list[EngineRequest] = []
        self._keep = keep  # bounded record of requests, newest last

    async def send(self, request: EngineRequest) -> EngineResponse:
        if len(self.requests) >= self._keep:
            del self.requests[: self._keep // 2]
        self.requests.append(request)
        out = self.handler(request)
        if not isinstance(out, MemoryResponse):  # a coroutine (inspect.isawaitable: ~5 us)
            out = await out
        return out

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"<MemoryTransport sent={len(self.requests)}>"
