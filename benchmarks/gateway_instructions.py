"""Instructions per proxied request, counted by callgrind: a figure that machine noise
does not move, for A/B comparisons of the gateway's hot path.

    python benchmarks/gateway_instructions.py [--mode json|sse] [--auth] [--requests 3000]

One process runs the zero-latency engine (benchmarks/zero_engine.py's protocol), the
gateway with its default configuration (auth off unless ``--auth``; usage ledger on
SQLite; request logs on) behind its real HTTP front, and a keep-alive client with 16
connections, all over loopback sockets. The script runs itself twice under ``valgrind
--tool=callgrind`` (N and 2N requests) and prints the difference per request, so start-up
is not counted. Kernel work is not counted (callgrind sees user space only); client and
engine are counted but are the same in every variant. Needs valgrind (Debian package).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


async def _run(n: int, mode: str, auth: bool) -> None:
    import httptools
    from zero_engine import Proto, build

    from gantry.config import load_config
    from gantry.gateway.http import HttpServer
    from gantry.gateway.pipeline import SECURITY_HEADERS, Gateway
    from gantry.observability import RequestLog

    loop = asyncio.get_running_loop()
    engine = await loop.create_server(lambda: Proto(build(100)), "127.0.0.1", 0)
    eport = engine.sockets[0].getsockname()[1]
    tmp = tempfile.mkdtemp()
    cfg = load_config(
        env={
            "GANTRY_SECURITY__DATABASE_URL": f"sqlite:///{tmp}/i.db",
            "GANTRY_SECURITY__AUTH": "required" if auth else "off",
            "GANTRY_TIERS": "{unlimited: {}}",
        },
        overrides={"engines": [{"url": f"http://127.0.0.1:{eport}"}]},
    )
    log = RequestLog(open(os.devnull, "w"))  # noqa: SIM115, ASYNC230 - for the whole run
    gw = Gateway(cfg, request_log=log)
    async with gw:
        server = HttpServer(gw.handle, wanted=gw.wanted, static_headers=SECURITY_HEADERS)
        await server.start(host="127.0.0.1", port=0)
        import gc

        gc.collect()
        gc.freeze()  # as gantry serve does after start-up
        if os.environ.get("BENCH_GC_THRESHOLD"):
            gc.set_threshold(*(int(x) for x in os.environ["BENCH_GC_THRESHOLD"].split(",")))
        auth_line = b""
        if auth:
            assert gw.security.keys is not None
            secret, _ = await gw.security.keys.create(tenant="bench", tier="unlimited")
            await gw.auth.refresh()
            auth_line = f"authorization: Bearer {secret}\r\n".encode()
        stream = b',"stream":true' if mode == "sse" else b""
        body = (
            b'{"model":"zero","messages":[{"role":"user","content":"Hello, can you tell me a '
            b'short joke?"}],"max_tokens":128' + stream + b"}"
        )
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + auth_line
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        left = [n]

        class Client(asyncio.Protocol):
            def __init__(self, done: asyncio.Future[None]) -> None:
                self.done = done
                self.parser = httptools.HttpResponseParser(self)

            def connection_made(self, t: asyncio.BaseTransport) -> None:
                self.t = t
                self.send()

            def send(self) -> None:
                if left[0] <= 0:
                    self.t.close()
                    if not self.done.done():
                        self.done.set_result(None)
                    return
                left[0] -= 1
                self.t.write(request)  # type: ignore[attr-defined]

            def data_received(self, data: bytes) -> None:
                self.parser.feed_data(data)

            def on_message_complete(self) -> None:
                if self.parser.get_status_code() != 200:
                    raise SystemExit("non-200 answer")
                self.send()

        done: list[asyncio.Future[None]] = []
        port = eport if os.environ.get("BENCH_DIRECT") else server.port
        for _ in range(16):
            fut = loop.create_future()
            done.append(fut)
            await loop.create_connection(lambda f=fut: Client(f), "127.0.0.1", port)
        await asyncio.gather(*done)
        await server.aclose()
    engine.close()


def _count(n: int, args: argparse.Namespace) -> int:
    out = tempfile.mktemp(suffix=".callgrind")
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        __file__,
        "--child",
        str(n),
        "--mode",
        args.mode,
    ] + (["--auth"] if args.auth else [])
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True)
    text = Path(out).read_text(errors="replace")
    Path(out).unlink()
    m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    assert m, "no callgrind totals"
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("json", "sse"), default="json")
    ap.add_argument("--auth", action="store_true")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import uvloop

        uvloop.run(_run(args.child, args.mode, args.auth))
        return
    n = args.requests
    a, b = _count(n, args), _count(2 * n, args)
    per = (b - a) / n
    print(
        f"{args.mode} auth {'on' if args.auth else 'off'}: {per / 1000:.1f}k instructions "
        f"per request (user space: gateway + client + engine; {n} vs {2 * n} requests)"
    )


if __name__ == "__main__":
    main()
