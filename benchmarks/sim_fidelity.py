"""(c) Fidelity: Llama-3.1-8B on H100, bf16, measured from a client like `vllm bench serve`.

    python benchmarks/sim_fidelity.py

* single-stream TTFT for a short (~100-token) and a 1,024-token prompt (fresh prompts:
  no prefix hit);
* single-stream TPOT (256 output tokens), on H100 and on A100-40GB;
* saturated output tokens/s: 1,000 requests of 256 in / 256 out sent at once.

Published figures it is compared with are listed in docs/simulator.md ("Fidelity").
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import aiohttp
from _common import gantry, process, table

from gantry.netutil import free_port


async def stream(
    session: aiohttp.ClientSession, url: str, prompt: list[int], max_tokens: int
) -> tuple[float, float, int]:
    body = {
        "model": "m",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    t0 = time.perf_counter()
    first = last = 0.0
    n = 0
    async with session.post(url, json=body) as r:
        async for line in r.content:
            if line.startswith(b'data: {"id"'):
                now = time.perf_counter()
                if not first:
                    first = now
                last = now
                n += 1
    return first - t0, last - first, n


async def single(url: str, prompt_len: int, out: int, reps: int) -> tuple[float, float]:
    """Median TTFT and TPOT of one stream at a time."""
    rng = random.Random(prompt_len)
    conn = aiohttp.TCPConnector(limit=0)
    ttfts, tpots = [], []
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(900)) as s:
        for _ in range(reps):
            prompt = [rng.randrange(300, 70000) for _ in range(prompt_len)]
            ttft, decode, n = await stream(s, url, prompt, out)
            ttfts.append(ttft)
            if n > 1:
                tpots.append(decode / (n - 1))
    return statistics.median(ttfts), statistics.median(tpots) if tpots else 0.0


async def saturated(url: str) -> float:
    rng = random.Random(1)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(900)) as s:
        prompts = [[rng.randrange(300, 70000) for _ in range(256)] for _ in range(1000)]
        t0 = time.perf_counter()
        results = await asyncio.gather(*(stream(s, url, p, 256) for p in prompts))
        dur = time.perf_counter() - t0
    return sum(n for _, _, n in results) / dur


def sim_args(port: int, gpu: str) -> list[str]:
    return gantry(
        "sim",
        "--port",
        str(port),
        "--gpu",
        gpu,
        "--model",
        "llama-3.1-8b",
        "--served-model-name",
        "m",
        "--log-level",
        "warning",
    )


def main() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/completions"
    with process(sim_args(port, "H100"), f"http://127.0.0.1:{port}/health"):
        ttft_short, tpot = asyncio.run(single(url, 100, 128, 5))
        ttft_1k, _ = asyncio.run(single(url, 1024, 1, 7))
        tps = asyncio.run(saturated(url))
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/completions"
    with process(sim_args(port, "A100-40GB"), f"http://127.0.0.1:{port}/health"):
        _, tpot_a100 = asyncio.run(single(url, 1024, 128, 3))
    print("sim fidelity: Llama-3.1-8B-Instruct, bf16, vLLM defaults (client-side timing)")
    print(
        table(
            [
                ("metric", "gantry sim", "published vLLM", "source"),
                (
                    "H100 TTFT, short prompt, 1 stream",
                    f"{ttft_short * 1000:.1f} ms",
                    "13.98 ms (p50)",
                    "[1]",
                ),
                ("H100 TPOT, 1 stream", f"{tpot * 1000:.2f} ms", "6.48 ms (p50)", "[1]"),
                (
                    "H100 TTFT, 1k-token prompt, 1 stream",
                    f"{ttft_1k * 1000:.1f} ms",
                    "(none found)",
                    "roofline",
                ),
                (
                    "A100-40GB TPOT, 1 stream",
                    f"{tpot_a100 * 1000:.2f} ms",
                    "13.3 ms (75 tok/s)",
                    "[2]",
                ),
                ("H100 output tok/s, saturated", f"{tps:,.0f}", "~12,500", "[3]"),
            ]
        )
    )
    print("sources: see docs/simulator.md, section Fidelity")


if __name__ == "__main__":
    main()
