"""The pipeline's own cost per request, in process: no sockets, no client, no engine.

    python benchmarks/gateway_inprocess.py [--requests 20000] [--profile]

Drives ``Gateway.handle`` with in-memory exchanges (``MemoryConnection``) against an
in-memory engine (``MemoryTransport``) that answers like the peer-bench fake engine: a
fixed chat completion, or 100 chunk events + [DONE] in one read. Reports CPU µs per
request (thread CPU time, so other processes on the machine barely move it) for:
JSON and SSE with the default configuration (auth off), and with auth on (a key on a
tier without limits). ``--profile`` prints the top of a cProfile of the JSON case.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time

import orjson

from gantry.config import load_config
from gantry.engines import MemoryResponse, MemoryTransport
from gantry.engines.transport import EngineRequest
from gantry.gateway import Gateway
from gantry.gateway.http import MemoryConnection
from gantry.gateway.pipeline import SECURITY_HEADERS
from gantry.observability import RequestLog

MODEL = "mock"
JSON_BODY = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! A fixed reply."},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "total_tokens": 28, "completion_tokens": 16},
    }
)


def _event(delta: dict[str, object], finish: str | None = None, usage: bool = False) -> bytes:
    chunk: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage:
        chunk["usage"] = {"prompt_tokens": 12, "total_tokens": 110, "completion_tokens": 98}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


SSE_BODY = (
    _event({"role": "assistant", "content": ""})
    + b"".join(_event({"content": f" tok{i}"}) for i in range(2, 100))
    + _event({"content": ""}, "stop", usage=True)
    + b"data: [DONE]\n\n"
)


def engine(req: EngineRequest) -> MemoryResponse:
    if req.path == "/health":
        return MemoryResponse(200, b"")
    if req.path == "/v1/models":
        return MemoryResponse.json({"data": [{"id": MODEL}]})
    if req.path == "/metrics":
        return MemoryResponse(404, b"")
    if req.body and b'"stream":true' in req.body:
        return MemoryResponse.sse([SSE_BODY])
    return MemoryResponse(200, JSON_BODY, headers={"content-type": "application/json"})


async def run(n: int, *, stream: bool, auth: bool, profile: bool) -> float:
    tmp = tempfile.mkdtemp()
    env = {
        "GANTRY_SECURITY__DATABASE_URL": f"sqlite:///{tmp}/bench.db",
        "GANTRY_SECURITY__AUTH": "required" if auth else "off",
        "GANTRY_TIERS": "{unlimited: {}}",
    }
    cfg = load_config(
        env=env, overrides={"engines": [{"url": "http://memory", "name": "e0", "models": [MODEL]}]}
    )
    log = RequestLog(open(os.devnull, "w"))  # noqa: SIM115, ASYNC230 - lives as long as the run
    gw = Gateway(cfg, transport_factory=lambda spec: MemoryTransport(engine), request_log=log)
    headers = {b"content-type": "application/json"}
    async with gw:
        if auth:
            assert gw.security.keys is not None
            secret, _ = await gw.security.keys.create(tenant="bench", tier="unlimited")
            await gw.auth.refresh()
            headers[b"authorization"] = f"Bearer {secret}"
        body = orjson.dumps(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Hello, can you tell me a short joke?"}],
                "max_tokens": 128,
                "stream": stream,
            }
        )

        async def one() -> None:
            conn = MemoryConnection(SECURITY_HEADERS)
            x = conn.exchange("POST", "/v1/chat/completions", headers, body)
            await gw.handle(x)
            if n == 1 or not conn.data.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"bad answer: {bytes(conn.data[:300])!r}")

        for _ in range(200):
            await one()
        prof = cProfile.Profile() if profile else None
        if prof:
            prof.enable()
        t0 = time.thread_time()
        for _ in range(n):
            await one()
        took = time.thread_time() - t0
        if prof:
            prof.disable()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
            print(s.getvalue())
    return took / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    import uvloop

    for auth in (False, True):
        for stream in (False, True):
            us = uvloop.run(
                run(
                    a.requests,
                    stream=stream,
                    auth=auth,
                    profile=a.profile and not stream and not auth,
                )
            )
            print(
                f"{'sse ' if stream else 'json'} auth {'on ' if auth else 'off'}: "
                f"{us:6.1f} us CPU per request (pipeline only)",
                flush=True,
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
