"""A zero-latency vLLM-shaped engine for overhead benchmarks: canned answers, no model.

    python benchmarks/zero_engine.py --port 8000 [--chunks 100]

Raw asyncio + httptools (no framework) so that the engine is never the bottleneck when
measuring a gateway in front of it. Non-streaming chat returns one fixed completion;
streaming chat returns ``--chunks`` token chunks, a usage chunk if asked, and [DONE].
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import orjson
import uvloop

MODEL = "zero"


def _chunk(i: int, finish: str | None) -> bytes:
    return (
        b"data: "
        + orjson.dumps(
            {
                "id": "chatcmpl-zero",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": f" t{i}"},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
            }
        )
        + b"\n\n"
    )


def build(chunks: int) -> dict[str, bytes]:
    unary = orjson.dumps(
        {
            "id": "chatcmpl-zero",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 8, "total_tokens": 9, "completion_tokens": 1},
        }
    )
    usage = (
        b"data: "
        + orjson.dumps(
            {
                "id": "chatcmpl-zero",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": MODEL,
                "choices": [],
                "usage": {
                    "prompt_tokens": 8,
                    "total_tokens": 8 + chunks,
                    "completion_tokens": chunks,
                },
            }
        )
        + b"\n\n"
    )
    body = b"".join(_chunk(i, "length" if i == chunks - 1 else None) for i in range(chunks))
    models = orjson.dumps(
        {"object": "list", "data": [{"id": MODEL, "object": "model", "max_model_len": 4096}]}
    )

    def resp(ctype: bytes, payload: bytes) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: "
            + ctype
            + b"\r\ncontent-length: "
            + str(len(payload)).encode()
            + b"\r\n\r\n"
            + payload
        )

    def sse(payload: bytes) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(payload)
            + payload
            + b"\r\n0\r\n\r\n"
        )

    return {
        "unary": resp(b"application/json", unary),
        "stream": sse(body + b"data: [DONE]\n\n"),
        "stream_usage": sse(body + usage + b"data: [DONE]\n\n"),
        "health": resp(b"text/plain", b""),
        "models": resp(b"application/json", models),
        "metrics": resp(b"text/plain", b""),
        "404": b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
    }


class Proto(asyncio.Protocol):
    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers = answers
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()  # type: ignore[attr-defined]

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        a = self.answers
        path = self.url.split(b"?")[0]
        if path.endswith(b"/completions"):
            body = b"".join(self.body)
            if b'"stream":true' in body or b'"stream": true' in body:
                out = a["stream_usage"] if b"include_usage" in body else a["stream"]
            else:
                out = a["unary"]
        elif path == b"/health":
            out = a["health"]
        elif path == b"/v1/models":
            out = a["models"]
        elif path == b"/metrics":
            out = a["metrics"]
        else:
            out = a["404"]
        self.transport.write(out)  # type: ignore[attr-defined]
        self.body.clear()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--chunks", type=int, default=100)
    a = ap.parse_args()
    answers = build(a.chunks)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Proto(answers), a.host, a.port, backlog=4096)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
