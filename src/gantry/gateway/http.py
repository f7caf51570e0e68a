"""The gateway's HTTP/1.1 front: asyncio protocol + httptools, feeding the pipeline.

Why not an ASGI server: per proxied request uvicorn's ASGI path (message dicts, a
receive task per request, header lists) cost more than all of gantry's own work; this
front does the same job in a fraction of that (docs/design.md, benchmarks/). It speaks
what an API front door needs and nothing more:

* keep-alive, pipelined requests answered in order (bounded), ``Expect: 100-continue``;
* ``Content-Length`` or chunked request bodies, read with a size limit and a timer;
* responses with a length, or streamed with chunked transfer-encoding (close-delimited
  for HTTP/1.0), with write flow control (a slow reader pauses the relay);
* limits: header bytes and count (431), URL length (414), body size (413), slow
  headers or body (408), idle keep-alive connections closed;
* disconnect callbacks, so the engine request is cancelled the moment a client leaves.

One ``Exchange`` is one request and its response. The handler gets it, reads the body
with ``read_body()``, answers with ``reply()`` or ``start_stream()``/``write()``/
``end_stream()``. Time-outs of idle and slow connections are checked by one sweep a
second for the whole server, not a timer per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any

import httptools

from gantry.protocol import ClientGone

log = logging.getLogger("gantry.http")

Headers = list[tuple[bytes, bytes]]
Parts = list[bytes | memoryview]
Handler = Callable[["Exchange"], Awaitable[None]]

JSON = b"application/json"
SSE = b"text/event-stream; charset=utf-8"
TEXT = b"text/plain; charset=utf-8"
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_MAX_PIPELINED = 16  # queued requests per connection before reading pauses


class BodyTooLarge(Exception):
    """The request body is larger than the limit the handler gave."""


class BodyTimeout(Exception):
    """The request body did not arrive in time."""


class HeadersRejected(Exception):
    """The request head broke a limit; carries the status to answer with."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else f"HTTP/1.1 {status} Unknown\r\n".encode()


class Exchange:
    """One request and its response on a connection."""

    __slots__ = (
        "_body",
        "_body_size",
        "_complete",
        "_conn",
        "_gone_callbacks",
        "_head_pending",
        "_http10",
        "_task",
        "_waiter",
        "chunked",
        "expect_continue",
        "finished",
        "gone",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query",
        "recorder",
        "response_headers",
        "started",
        "status",
        "t0",
        "too_large",
    )

    def __init__(
        self,
        conn: _Connection | None,
        method: str,
        path: str,
        query: str,
        headers: dict[bytes, str],
        *,
        keep_alive: bool = True,
        http10: bool = False,
    ) -> None:
        self._conn = conn
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers  # the request headers gantry reads: lower-case, first value
        self.response_headers: Headers = []  # added to whatever response is sent
        self.keep_alive = keep_alive
        self._http10 = http10
        self.t0 = time.perf_counter()
        self._body: list[bytes] = []
        self._body_size = 0
        self._complete = False
        self._waiter: asyncio.Future[None] | None = None
        self.too_large = False
        self.expect_continue = False
        self.gone = False
        self._gone_callbacks: list[Callable[[], object]] | None = None
        self._task: asyncio.Task[Any] | None = None
        self.started = False
        self.finished = False
        self.status = 0
        self.chunked = False
        self._head_pending = b""
        self.recorder: Recorder | None = None

    # -- request body ----------------------------------------------------------------
    def _feed(self, data: bytes, limit: int) -> None:
        self._body_size += len(data)
        if self._body_size > limit:
            self.too_large = True
            self._body.clear()
        elif not self.too_large:
            self._body.append(data)

    def _finish_body(self) -> None:
        self._complete = True
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def read_body(self, limit: int, within_s: float) -> bytes:
        """The whole body; ``BodyTooLarge``, ``BodyTimeout`` or ``ClientGone`` otherwise."""
        if not self._complete:
            if self.expect_continue and self._conn is not None:
                self.expect_continue = False
                self._conn.write(_CONTINUE)
            loop = asyncio.get_running_loop()
            end = loop.time() + within_s
            while not self._complete:
                if self.gone:
                    raise ClientGone()
                if self.too_large:
                    raise BodyTooLarge()
                left = end - loop.time()
                if left <= 0:
                    raise BodyTimeout()
                self._waiter = loop.create_future()
                timer = loop.call_later(left, self._wake)
                try:
                    await self._waiter
                finally:
                    timer.cancel()
                    self._waiter = None
        if self.too_large or self._body_size > limit:
            raise BodyTooLarge()
        body = self._body
        return body[0] if len(body) == 1 else b"".join(body)

    # -- disconnects -----------------------------------------------------------------
    def on_gone(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` if the client disconnects before the response ends."""
        if self.gone:
            callback()
            return
        if self._gone_callbacks is None:
            self._gone_callbacks = []
        self._gone_callbacks.append(callback)

    def cancel_on_gone(self, task: asyncio.Task[Any]) -> None:
        """Cancel ``task`` if the client disconnects before the response ends."""
        self._task = task

    def _lost(self) -> None:
        if self.finished or self.gone:
            return
        self.gone = True
        self._wake()
        if self._task is not None:
            self._task.cancel()
        for cb in self._gone_callbacks or ():
            try:
                cb()
            except Exception:  # a callback must not stop the others
                log.exception("disconnect callback failed")

    # -- response --------------------------------------------------------------------
    def _head(
        self, status: int, content_type: bytes, extra: Iterable[tuple[bytes, bytes]]
    ) -> list[bytes]:
        parts = [status_line(status), b"content-type: ", content_type, b"\r\n"]
        for k, v in self.response_headers:
            parts += (k, b": ", v, b"\r\n")
        for k, v in extra:
            parts += (k, b": ", v, b"\r\n")
        if self._conn is not None:
            parts.append(self._conn.server.static_headers)
            if self._conn.server.draining:
                self.keep_alive = False
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        return parts

    def reply(
        self,
        status: int,
        body: bytes,
        content_type: bytes = JSON,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """The whole response in one write."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = self.finished = True
        self.status = status
        parts = self._head(status, content_type, headers)
        parts += (b"content-length: ", str(len(body)).encode(), b"\r\n\r\n", body)
        if self.recorder is not None:
            self.recorder.whole(status, self.response_headers, content_type, body)
        if self._conn is not None:
            self._conn.write(b"".join(parts))

    def start_stream(self, status: int = 200, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.status = status
        parts = self._head(status, SSE, headers)
        parts.append(b"cache-control: no-cache\r\n")
        if self._http10:
            self.keep_alive = False  # close-delimited body
        else:
            self.chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        if self.recorder is not None:
            self.recorder.stream_start(status, self.response_headers)
        # Sent with the first part of the body: one write (and one packet) fewer.
        self._head_pending = b"".join(parts)

    def _framed(self, parts: Parts, end: bool) -> Parts:
        """The head if still pending, the parts in a chunk frame, the end marker."""
        out: Parts = []
        if self._head_pending:
            out.append(self._head_pending)
            self._head_pending = b""
        size = 0
        for p in parts:
            size += len(p)
        if self.chunked:
            if size:
                out.append(b"%x\r\n" % size)
                out += parts
                out.append(b"\r\n0\r\n\r\n" if end else b"\r\n")
            elif end:
                out.append(b"0\r\n\r\n")
        else:
            out += parts
        return out

    async def write(self, data: bytes | Parts) -> None:
        """Send part of a streamed body (bytes, or parts sent in one vectored write);
        waits while the client's buffer is full."""
        parts: Parts = [data] if isinstance(data, bytes) else data
        if self.gone or not any(parts):
            return
        if self.recorder is not None:
            for p in parts:
                self.recorder.part(bytes(p))
        conn = self._conn
        if conn is None:
            return
        conn.writelines(self._framed(parts, False))
        if conn.paused:
            await conn.drained()

    def end_stream(self, data: bytes | Parts = b"") -> None:
        if self.finished:
            return
        self.finished = True
        parts: Parts = [data] if isinstance(data, bytes) else data
        if self.recorder is not None:
            for p in parts:
                if p:
                    self.recorder.part(bytes(p))
            self.recorder.end()
        conn = self._conn
        if conn is None or self.gone:
            return
        conn.writelines(self._framed(parts, True))

    def __repr__(self) -> str:
        return f"<Exchange {self.method} {self.path} status={self.status or '-'}>"


class Recorder:
    """Keeps a bounded copy of a response as it is sent (for idempotent replays)."""

    __slots__ = (
        "complete",
        "content_type",
        "headers",
        "limit",
        "parts",
        "size",
        "status",
        "stream",
    )

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status = 0
        self.headers: Headers = []
        self.content_type = JSON
        self.parts: list[bytes] = []
        self.size = 0
        self.stream = False
        self.complete = False

    def whole(self, status: int, headers: Headers, content_type: bytes, body: bytes) -> None:
        self.status, self.headers, self.content_type = status, list(headers), content_type
        self.part(body)
        self.complete = True

    def stream_start(self, status: int, headers: Headers) -> None:
        self.status, self.headers, self.stream = status, list(headers), True

    def part(self, data: bytes) -> None:
        self.size += len(data)
        if self.size <= self.limit:
            self.parts.append(data)

    def end(self) -> None:
        self.complete = True

    @property
    def kept(self) -> bool:
        return self.complete and self.size <= self.limit


class _Phase(enum.Enum):
    IDLE = 0  # between requests
    HEAD = 1  # reading a request line and headers
    BODY = 2  # headers done, body (of the exchange being parsed) arriving


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_current",
        "_drain",
        "_hdr_count",
        "_hdr_size",
        "_hdrs",
        "_parsing",
        "_pending",
        "_url",
        "loop",
        "parser",
        "paused",
        "phase",
        "phase_since",
        "server",
        "transport",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.paused = False
        self._drain: asyncio.Future[None] | None = None
        self._current: Exchange | None = None  # being answered
        self._parsing: Exchange | None = None  # receiving its body
        self._pending: deque[Exchange] = deque()  # pipelined, waiting their turn
        self.phase = _Phase.IDLE
        self.phase_since = time.monotonic()
        self._url = b""
        self._hdrs: dict[bytes, str] = {}
        self._hdr_size = 0
        self._hdr_count = 0

    # -- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        for x in (self._current, *self._pending):
            if x is not None:
                x._lost()
        if self._parsing is not None and self._parsing is not self._current:
            self._parsing._lost()
        self._pending.clear()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except HeadersRejected as exc:
            self._refuse(
                exc.status,
                "Request headers are too large."
                if exc.status == 431
                else "Request URL is too long.",
            )
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HeadersRejected):
                self._refuse(
                    cause.status,
                    "Request headers are too large."
                    if cause.status == 431
                    else "Request URL is too long.",
                )
            else:
                log.exception("HTTP parser callback failed")
                self._refuse(400, "Malformed HTTP request.")
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._refuse(400, "Malformed HTTP request.")

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drained(self) -> None:
        if self.paused and self.transport is not None:
            if self._drain is None or self._drain.done():
                self._drain = self.loop.create_future()
            await self._drain

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.phase = _Phase.HEAD
        self.phase_since = time.monotonic()
        self._url = b""
        self._hdrs = {}
        self._hdr_size = 0
        self._hdr_count = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.server.max_url_bytes:
            raise HeadersRejected(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._hdr_size += len(name) + len(value)
        self._hdr_count += 1
        if self._hdr_size > self.server.max_header_bytes or self._hdr_count > 100:
            raise HeadersRejected(431)
        name = name.lower()
        if name in self.server.wanted and name not in self._hdrs:
            self._hdrs[name] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        p = self.parser
        path, _, query = self._url.partition(b"?")
        x = Exchange(
            self,
            p.get_method().decode("latin-1"),
            path.decode("latin-1"),
            query.decode("latin-1"),
            self._hdrs,
            keep_alive=p.should_keep_alive(),
            http10=p.get_http_version() == "1.0",
        )
        x.expect_continue = self._hdrs.get(b"expect", "").lower() == "100-continue"
        self._parsing = x
        self.phase = _Phase.BODY
        if self._current is None:
            self._start(x)
        else:
            self._pending.append(x)
            if len(self._pending) >= _MAX_PIPELINED and self.transport is not None:
                self.transport.pause_reading()

    def on_body(self, body: bytes) -> None:
        x = self._parsing
        if x is not None:
            s = self.server
            x._feed(
                body,
                s.body_limits.get(x.path, s.max_body_bytes) if s.body_limits else s.max_body_bytes,
            )

    def on_message_complete(self) -> None:
        x = self._parsing
        self._parsing = None
        self.phase = _Phase.IDLE
        self.phase_since = time.monotonic()
        if x is not None:
            x._finish_body()

    # -- exchanges ---------------------------------------------------------------------
    def _start(self, x: Exchange) -> None:
        self._current = x
        self.server.active += 1
        self.server.idle.clear()
        self.loop.create_task(self.server.run(x))

    def exchange_done(self, x: Exchange) -> None:
        """The handler returned: close, or go on with the next request."""
        self._current = None
        if not x.finished or not x.keep_alive or self.server.draining or not x._complete:
            # unfinished response, close requested, or answered before the whole body
            # arrived (its rest is not worth reading): this connection ends here
            self.close()
            return
        if self._pending:
            nxt = self._pending.popleft()
            if self.transport is not None:
                self.transport.resume_reading()
            self._start(nxt)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def writelines(self, parts: Parts) -> None:
        if self.transport is not None:
            self.transport.writelines(parts)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request the parser could not take, then close."""
        from gantry.protocol import error_bytes

        if self._current is None and self.transport is not None:
            body = error_bytes(message, "invalid_request_error")
            self.transport.write(
                status_line(status)
                + b"content-type: application/json\r\nconnection: close\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\n"
                + self.server.static_headers
                + b"\r\n"
                + body
            )
            self.server.refused(status, message)
        self.close()

    def sweep(self, now: float) -> None:
        """Close what has been idle or slow for too long (called once a second)."""
        s = self.server
        if self._current is not None:
            return  # answering: the pipeline's own timeouts apply
        if self.phase is _Phase.IDLE:
            if now - self.phase_since > s.keepalive_s:
                self.close()
        elif self.phase is _Phase.HEAD and now - self.phase_since > s.header_timeout_s:
            self._refuse(408, "The request headers did not arrive in time.")


class HttpServer:
    """Listens, owns the connections, and runs the handler for each exchange."""

    def __init__(
        self,
        handler: Handler,
        *,
        wanted: frozenset[bytes],
        static_headers: Iterable[tuple[bytes, bytes]] = (),
        max_header_bytes: int = 16384,
        max_url_bytes: int = 8192,
        max_body_bytes: int = 16 * 1024 * 1024,
        body_limits: dict[str, int] | None = None,
        header_timeout_s: float = 30.0,
        keepalive_s: float = 30.0,
        on_refused: Callable[[int, str], None] | None = None,
    ) -> None:
        self.handler = handler
        self.wanted = wanted | {b"expect"}
        self.static_headers = b"".join(k + b": " + v + b"\r\n" for k, v in static_headers)
        self.max_header_bytes = max_header_bytes
        self.max_url_bytes = max_url_bytes
        self.max_body_bytes = max_body_bytes
        self.body_limits = dict(body_limits or {})  # path -> its own limit (uploads)
        self.header_timeout_s = header_timeout_s
        self.keepalive_s = keepalive_s
        self._on_refused = on_refused
        self.loop = asyncio.get_event_loop()
        self.connections: set[_Connection] = set()
        self.active = 0  # exchanges being answered
        self.idle = asyncio.Event()
        self.idle.set()
        self.draining = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await self.loop.create_server(
                lambda: _Connection(self), sock=sock, backlog=4096, ssl=ssl_context
            )
        else:
            self._server = await self.loop.create_server(
                lambda: _Connection(self),
                host,
                port,
                backlog=4096,
                ssl=ssl_context,
                reuse_address=True,
            )
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    @property
    def port(self) -> int:
        assert self._server is not None
        sockets: Any = getattr(self._server, "sockets", None)
        return int(sockets[0].getsockname()[1])

    async def run(self, x: Exchange) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(x)
        except Exception:
            log.exception("unhandled error answering %s %s", x.method, x.path)
        finally:
            self._tasks.discard(task)
            self.active -= 1
            if not self.active:
                self.idle.set()
            if x._conn is not None:
                x._conn.exchange_done(x)

    def refused(self, status: int, message: str) -> None:
        if self._on_refused is not None:
            self._on_refused(status, message)

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            conn.sweep(now)
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    def close_idle(self) -> None:
        for conn in list(self.connections):
            if conn._current is None:
                conn.close()

    async def aclose(self, grace_s: float = 0.0) -> None:
        """Stop accepting, let exchanges finish for ``grace_s``, then cut the rest."""
        self.draining = True
        self.stop_listening()
        self.close_idle()
        if grace_s > 0 and self.active:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), grace_s)
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self.connections):
            conn.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


class _MemoryServer:
    __slots__ = ("draining", "static_headers")

    def __init__(self, static_headers: bytes) -> None:
        self.static_headers = static_headers
        self.draining = False


class MemoryConnection:
    """A connection in memory for driving the pipeline without sockets (unit tests,
    in-process benchmarks): ``exchange()`` builds a request, the response bytes collect
    in ``data`` and ``response()`` parses them."""

    def __init__(self, static_headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.server = _MemoryServer(b"".join(k + b": " + v + b"\r\n" for k, v in static_headers))
        self.data = bytearray()
        self.paused = False
        self.closed = False

    def exchange(
        self,
        method: str,
        path: str,
        headers: dict[bytes, str] | None = None,
        body: bytes = b"",
    ) -> Exchange:
        path, _, query = path.partition("?")
        x = Exchange(self, method, path, query, dict(headers or {}))  # type: ignore[arg-type]
        if body:
            x._feed(body, 1 << 62)
        x._finish_body()
        return x

    def write(self, data: bytes) -> None:
        self.data += data

    def writelines(self, parts: Parts) -> None:
        for p in parts:
            self.data += p

    async def drained(self) -> None:
        return None

    def exchange_done(self, x: Exchange) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body of what was written."""
        out: dict[str, Any] = {"headers": {}, "body": bytearray()}

        class _P:
            def on_header(self, k: bytes, v: bytes) -> None:
                out["headers"][k.decode().lower()] = v.decode()

            def on_body(self, b: bytes) -> None:
                out["body"] += b

        p = httptools.HttpResponseParser(_P())
        p.feed_data(bytes(self.data))
        return p.get_status_code(), out["headers"], bytes(out["body"])
