"""(b) Timing accuracy: N concurrent streams on a realistic profile; wall-clock step time
versus the latency model's step time.

    python benchmarks/sim_timing.py [--streams 1000] [--tokens 128]

The simulator keeps two counters, the modelled and the wall-clock seconds of every
engine step (`gantry_sim_step_seconds_total{clock=...}`); the ratio over the run is the
timing error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.request

import aiohttp
from _common import gantry, process

from gantry.netutil import free_port


async def one(session: aiohttp.ClientSession, url: str, tokens: int) -> None:
    body = {
        "model": "m",
        "prompt": "timing " * 100,
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
    }
    async with session.post(url, json=body) as r:
        async for _ in r.content:
            pass


async def run(url: str, n: int, tokens: int) -> None:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(600)) as s:
        await asyncio.gather(*(one(s, url, tokens) for _ in range(n)))


def stats(base: str) -> dict[str, float]:
    with urllib.request.urlopen(base + "/sim/stats") as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--model", default="llama-3.1-8b")
    a = ap.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = gantry(
        "sim",
        "--port",
        str(port),
        "--gpu",
        a.gpu,
        "--model",
        a.model,
        "--served-model-name",
        "m",
        "--enable-admin",
        "--log-level",
        "warning",
    )
    with process(args, base + "/health"):
        s0 = stats(base)
        t0 = time.perf_counter()
        asyncio.run(run(base + "/v1/completions", a.streams, a.tokens))
        wall = time.perf_counter() - t0
        s1 = stats(base)
    steps = s1["steps"] - s0["steps"]
    model = s1["step_seconds_model"] - s0["step_seconds_model"]
    real = s1["step_seconds_wall"] - s0["step_seconds_wall"]
    err = (real - model) / model * 100
    print(f"sim timing: {a.streams} concurrent streams x {a.tokens} tokens, {a.model} on {a.gpu}")
    print(
        f"  steps: {steps:.0f}   mean modelled step: {model / steps * 1000:.2f} ms   "
        f"mean wall-clock step: {real / steps * 1000:.2f} ms"
    )
    print(f"  wall-clock vs model: {err:+.2f}%   (run took {wall:.1f} s)")


if __name__ == "__main__":
    main()
