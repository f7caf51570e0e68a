"""(a) Scale: one simulator process, `instant` profile, N concurrent streaming requests.

    python benchmarks/sim_scale.py [--requests 2000] [--tokens 256]

Prints the wall time, the simulator's CPU time, and checks every stream completed with
exactly the requested number of tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
from _common import cpu_seconds, gantry, process

from gantry.netutil import free_port


async def one(session: aiohttp.ClientSession, url: str, tokens: int) -> int:
    body = {
        "model": "m",
        "prompt": "scale test",
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    got = 0
    async with session.post(url, json=body) as r:
        async for line in r.content:
            if line.startswith(b'data: {"id"') and b'"usage"' in line:
                import json

                got = json.loads(line[6:])["usage"]["completion_tokens"]
    return got


async def run(url: str, n: int, tokens: int) -> list[int]:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(600)) as s:
        return await asyncio.gather(*(one(s, url, tokens) for _ in range(n)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=256)
    a = ap.parse_args()
    port = free_port()
    args = gantry(
        "sim",
        "--port",
        str(port),
        "--profile",
        "instant",
        "--gpu",
        "H100",
        "--model",
        "llama-3.1-8b",
        "--served-model-name",
        "m",
        "--max-num-seqs",
        str(a.requests),
        "--log-level",
        "warning",
    )
    with process(args, f"http://127.0.0.1:{port}/health") as proc:
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        counts = asyncio.run(run(f"http://127.0.0.1:{port}/v1/completions", a.requests, a.tokens))
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
    complete = sum(1 for c in counts if c == a.tokens)
    print(f"sim scale: {a.requests} concurrent streams x {a.tokens} tokens, instant profile")
    print(f"  completed with all tokens: {complete}/{a.requests}")
    print(
        f"  wall time: {wall:.2f} s   simulator CPU: {cpu:.2f} s "
        f"({a.requests * a.tokens / cpu:,.0f} streamed tokens per CPU-second)"
    )


if __name__ == "__main__":
    main()
