"""The HTTP/1.1 front over real loopback sockets: keep-alive, pipelining, bodies,
limits, slow clients, streaming, disconnects."""

from __future__ import annotations

import asyncio
import socket

import orjson
import pytest

from gantry.gateway.http import BodyTimeout, BodyTooLarge, Exchange, HttpServer
from gantry.protocol import ClientGone

WANTED = frozenset({b"x-test", b"content-type"})


class App:
    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def __call__(self, x: Exchange) -> None:
        x.on_gone(self.gone.set)
        if x.path == "/stream":
            x.start_stream(200)
            for i in range(3):
                await x.write(f"data: {i}\n\n".encode())
            x.end_stream(b"data: [DONE]\n\n")
            return
        if x.path == "/flood":  # far more than socket buffers hold, to a client not reading
            x.start_stream(200)
            for _ in range(2000):
                await x.write(b"x" * 65536)  # waits while the client's buffer is full
            x.end_stream()
            return
        if x.path == "/wait":
            await self.gone.wait()
            return
        try:
            body = await x.read_body(1000, 0.3)
        except BodyTooLarge:
            x.keep_alive = False
            x.reply(413, b"{}")
            return
        except BodyTimeout:
            x.keep_alive = False
            x.reply(408, b"{}")
            return
        except ClientGone:
            return
        x.reply(
            200,
            orjson.dumps(
                {
                    "method": x.method,
                    "path": x.path,
                    "query": x.query,
                    "body": body.decode(),
                    "test": x.headers.get(b"x-test"),
                }
            ),
        )


async def serve(app: App, **kw: object) -> HttpServer:
    server = HttpServer(app, wanted=WANTED, static_headers=[(b"x-static", b"1")], **kw)  # type: ignore[arg-type]
    await server.start(host="127.0.0.1", port=0)
    return server


async def exchange(port: int, data: bytes, *, until_close: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        if until_close:
            out = await asyncio.wait_for(reader.read(-1), 30)
        else:
            out = await asyncio.wait_for(reader.read(65536), 30)
    finally:
        writer.close()
    return out


def run(coro):
    return asyncio.run(coro)


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n".encode()
        + extra
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


def test_keep_alive_and_pipelining_answer_in_order():
    async def main() -> None:
        server = await serve(App())
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(post("/a?x=1", b"one", b"x-test: yes\r\n") + post("/b", b"two"))
        await writer.drain()
        data = b""
        while data.count(b"HTTP/1.1 200") < 2:
            data += await asyncio.wait_for(reader.read(65536), 30)
        first, second = data.split(b"HTTP/1.1 200 OK")[1:]
        assert b'"path":"/a"' in first and b'"query":"x=1"' in first and b'"test":"yes"' in first
        assert b'"path":"/b"' in second and b'"body":"two"' in second
        assert b"x-static: 1" in first
        writer.close()
        await server.aclose()

    run(main())


def test_chunked_request_body_and_expect_continue():
    async def main() -> None:
        server = await serve(App())
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
            b"expect: 100-continue\r\n\r\n"
        )
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 30)).startswith(b"HTTP/1.1 100")
        await reader.readline()
        writer.write(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        data = await asyncio.wait_for(reader.read(65536), 30)
        assert data.startswith(b"HTTP/1.1 200") and b'"body":"abcde"' in data
        writer.close()
        await server.aclose()

    run(main())


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nhost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"b" * 20000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(150)) + b"\r\n", 431),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (post("/big", b"z" * 5000), 413),
    ],
    ids=["long-url", "big-header", "many-headers", "garbage", "big-body"],
)
def test_limits(request_, status):
    async def main() -> None:
        server = await serve(App())
        data = await exchange(server.port, request_, until_close=True)
        assert data.startswith(f"HTTP/1.1 {status}".encode()), data[:80]
        if status != 413:
            assert b'"error"' in data  # OpenAI error JSON from the front itself
        await server.aclose()

    run(main())


def test_slow_headers_and_slow_body_get_408_and_the_connection_closes():
    async def main() -> None:
        server = await serve(App(), header_timeout_s=0.2)
        data = await exchange(server.port, b"GET / HTTP/1.1\r\nhost: x\r\n", until_close=True)
        assert data.startswith(b"HTTP/1.1 408")
        data = await exchange(server.port, post("/s", b"0123456789")[:-5], until_close=True)
        assert data.startswith(b"HTTP/1.1 408")  # the handler's body timer
        await server.aclose()

    run(main())


def test_idle_keepalive_connections_are_closed():
    async def main() -> None:
        server = await serve(App(), keepalive_s=0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(post("/a", b""))
        data = await asyncio.wait_for(reader.read(-1), 30)  # answer, then closed when idle
        assert data.startswith(b"HTTP/1.1 200")
        writer.close()
        await server.aclose()

    run(main())


def test_streaming_is_chunked_and_http10_is_close_delimited():
    async def main() -> None:
        server = await serve(App())
        data = await exchange(
            server.port,
            b"GET /stream HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            until_close=True,
        )
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head
        assert body.endswith(b"0\r\n\r\n") and b"data: 2\n\n" in body
        data = await exchange(server.port, b"GET /stream HTTP/1.0\r\n\r\n", until_close=True)
        head, _, body = data.partition(b"\r\n\r\n")
        assert (
            b"chunked" not in head and body == b"data: 0\n\ndata: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
        )
        await server.aclose()

    run(main())


def test_disconnect_calls_back_and_slow_readers_pause_the_writer():
    async def main() -> None:
        app = App()
        server = await serve(app)
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /wait HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0)
        writer.close()
        await asyncio.wait_for(app.gone.wait(), 30)
        # a client that does not read: the handler's writes wait, memory stays bounded
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /flood HTTP/1.1\r\nhost: x\r\n\r\n")
        for _ in range(3000):  # until the writer is paused (bounded: 30 s)
            if any(c.paused for c in server.connections):
                break
            await asyncio.sleep(0.01)
        assert any(c.paused for c in server.connections)
        assert server.active >= 1  # the handler is still there, waiting to write
        sock.close()
        await server.aclose()

    run(main())


def test_drain_waits_for_active_exchanges_and_closes_idle_ones():
    async def main() -> None:
        server = await serve(App())
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", server.port)
        idle_w.write(post("/a", b""))
        await asyncio.wait_for(idle_r.read(65536), 30)  # answered; the connection idles
        await server.aclose(grace_s=5)
        assert await asyncio.wait_for(idle_r.read(-1), 30) == b""  # closed by the drain
        idle_w.close()

    run(main())
