"""A lean HTTP/1.1 engine transport: asyncio protocols + httptools, pooled keep-alive.

Why not aiohttp here: on the gateway's hot path aiohttp's client costs ~150 us per
request; this transport does the same job in a fraction of that (see
benchmarks/gateway_overhead.py and docs/design.md). It speaks only what engines need:
one request at a time per connection, Content-Length request bodies, chunked or sized
responses, keep-alive reuse, TLS via an ``ssl`` context.

Timeouts use one timer handle per phase (no extra tasks). A request that fails on a
reused idle connection before any response byte is retried once on a fresh one (the
engine may have closed it at its keep-alive limit).

Errors name the engine by ``name``, never by URL (see ``gantry.engines.transport``).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httptools

from gantry.engines.transport import (
    EngineRequest,
    EngineResponse,
    describe_os_error,
    netloc_of,
)
from gantry.errors import EngineTimeout, RetryableEngineError

_IDLE_TTL_S = 4.0  # below vLLM's 5 s keep-alive, so we close first
_MAX_IDLE = 256  # bounded pool of idle connections per engine


class _Conn(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_done",
        "_eof",
        "_headers",
        "_headers_fut",
        "_paused",
        "_waiter",
        "exc",
        "idle_since",
        "keep_alive",
        "loop",
        "name",
        "parser",
        "status",
        "transport",
        "used",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self.loop = loop
        self.name = name  # the engine's, for error messages
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.used = False
        self.idle_since = 0.0
        self.exc: Exception | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._headers_fut: asyncio.Future[None] = self.loop.create_future()
        self._body: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._eof = False
        self.keep_alive = True

    # -- protocol callbacks ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover - engines do not upgrade
            self._fail(self._error("asked for a protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(self._error(f"sent a bad HTTP response ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self.keep_alive = False
        if not self._done:
            self._fail(self._error("closed the connection"))
        self._wake()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if not self._headers_fut.done():
            self._headers_fut.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        self._done = True
        self._wake()

    # -- helpers -------------------------------------------------------------------
    def _error(self, what: str) -> RetryableEngineError:
        return RetryableEngineError(f"engine {self.name} {what}", engine=self.name)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc: Exception) -> None:
        self.exc = exc
        if not self._headers_fut.done():
            self._headers_fut.set_exception(exc)
            self._headers_fut.exception()  # mark retrieved; the caller re-raises
        self._wake()

    @property
    def got_bytes(self) -> bool:
        return self.status != 0

    def reusable(self) -> bool:
        return (
            self._done
            and self.keep_alive
            and self.exc is None
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()

    async def next_body(self) -> bytes | None:
        """The next body piece, or None at the end of the message."""
        while not self._body:
            if self._done:
                return None
            if self.exc is not None:
                raise self.exc
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None  # cancel-safe: data that arrives later stays queued
        return self._body.popleft()


class _Response:
    __slots__ = ("_conn", "_pool", "_released", "headers", "status")

    def __init__(self, conn: _Conn, pool: H1Transport) -> None:
        self._conn = conn
        self._pool = pool
        self.status = conn.status
        self.headers: Mapping[str, str] = _Headers(conn._headers)
        self._released = False

    async def read(self) -> bytes:
        parts = []
        try:
            while True:
                piece = await self._conn.next_body()
                if piece is None:
                    break
                parts.append(piece)
        finally:
            self.close()
        return b"".join(parts)

    async def next_chunk(self) -> bytes | None:
        return await self._conn.next_body()

    @property
    def complete(self) -> bool:
        """The whole body has arrived (reading it will not wait)."""
        return self._conn._done

    def buffered(self) -> bytes | None:
        """A body piece that has already arrived, if any (no waiting)."""
        body = self._conn._body
        return body.popleft() if body else None

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                piece = await self._conn.next_body()
                if piece is None:
                    return
                yield piece
        finally:
            self.close()

    def close(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self._conn)


class _Headers(Mapping[str, str]):
    """Response headers decoded on demand: the gateway reads two or three of them, and
    decoding all of them into a dict cost ~2 us a response."""

    __slots__ = ("_d", "_raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._d: dict[str, str] | None = None

    def get(self, key: str, default: Any = None) -> Any:
        want = key.lower().encode("latin-1")
        for k, v in self._raw:
            if k == want:
                return v.decode("latin-1")
        return default

    def _dict(self) -> dict[str, str]:
        if self._d is None:
            self._d = {k.decode("latin-1"): v.decode("latin-1") for k, v in self._raw}
        return self._d

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return str(value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._raw)


class H1Transport:
    """EngineTransport over pooled HTTP/1.1 connections to one engine.

    ``name`` is how errors refer to the engine (default ``host:port``; the pool passes
    the engine's configured name).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        max_idle: int = _MAX_IDLE,
        name: str | None = None,
    ) -> None:
        u = urlsplit(base_url)
        self.base_url = base_url.rstrip("/")
        self.name = name or netloc_of(self.base_url)
        self._host = u.hostname or "127.0.0.1"
        self._port = u.port or (443 if u.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if u.scheme == "https" else None
        )
        self._prefix = u.path.rstrip("/")
        host_hdr = u.netloc.encode()
        auth = f"authorization: Bearer {api_key}\r\n".encode() if api_key else b""
        self._fixed = b"host: " + host_hdr + b"\r\n" + auth
        self._idle: list[_Conn] = []
        self._max_idle = max_idle
        self._closed = False

    async def _connect(self, connect_s: float) -> _Conn:
        loop = asyncio.get_running_loop()
        name = self.name
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Conn(loop, name), self._host, self._port, ssl=self._ssl
                ),
                connect_s,
            )
        except TimeoutError as exc:
            raise EngineTimeout(
                f"engine {name} did not accept a connection within {connect_s:g}s", engine=name
            ) from exc
        except OSError as exc:
            raise RetryableEngineError(
                f"engine {name} unreachable: {describe_os_error(exc)}", engine=name
            ) from exc
        return conn

    def _acquire_idle(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < _IDLE_TTL_S and conn.reusable():
                conn._reset()
                return conn
            conn.close()
        return None

    def _release(self, conn: _Conn) -> None:
        if not self._closed and conn.reusable() and len(self._idle) < self._max_idle:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    def _encode(self, req: EngineRequest) -> bytes:
        head = [
            req.method.encode(),
            b" ",
            (self._prefix + req.path).encode(),
            b" HTTP/1.1\r\n",
            self._fixed,
        ]
        if req.headers:
            for k, v in req.headers.items():
                head.append(f"{k}: {v}\r\n".encode("latin-1"))
        body = req.body or b""
        if body or req.method == "POST":
            head.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
        head.append(b"\r\n")
        return b"".join(head) + body

    async def send(self, request: EngineRequest) -> EngineResponse:
        data = self._encode(request)
        conn = self._acquire_idle()
        reused = conn is not None
        if conn is None:
            conn = await self._connect(request.connect_timeout)
        try:
            return await self._exchange(conn, data, request.read_timeout)
        except RetryableEngineError:
            if not reused or conn.got_bytes:
                raise
        # The idle connection was stale: one more try on a fresh connection.
        conn = await self._connect(request.connect_timeout)
        return await self._exchange(conn, data, request.read_timeout)

    async def _exchange(self, conn: _Conn, data: bytes, read_s: float | None) -> _Response:
        assert conn.transport is not None
        conn.used = True
        conn.transport.write(data)
        handle = None
        if read_s is not None:
            handle = conn.loop.call_later(read_s, _expire, conn, read_s)
        try:
            await conn._headers_fut
        except BaseException:
            conn.close()
            raise
        finally:
            if handle is not None:
                handle.cancel()
        return _Response(conn, self)

    async def aclose(self) -> None:
        """Close the idle connections; answers still being read close theirs when done."""
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    def __repr__(self) -> str:
        return f"<H1Transport {self.name} {self.base_url} idle={len(self._idle)}>"


def _expire(conn: _Conn, timeout: float) -> None:
    name = conn.name
    conn._fail(EngineTimeout(f"engine {name} sent no response within {timeout:g}s", engine=name))
    conn.close()
