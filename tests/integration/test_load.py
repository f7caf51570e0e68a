"""Short load runs (marker `slow`; `make test` runs them, the long forms are benchmarks)."""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
import pytest

from tests.helpers import gateway, metric_value, sim

pytestmark = pytest.mark.slow


async def _streams(url: str, n: int, tokens: int) -> list[int]:
    async def one(s: aiohttp.ClientSession) -> int:
        body = {
            "model": "m",
            "prompt": "load",
            "max_tokens": tokens,
            "ignore_eos": True,
            "stream": True,
        }
        count = 0
        async with s.post(url, json=body) as r:
            assert r.status == 200
            async for line in r.content:
                if line.startswith(b'data: {"id"'):
                    count += 1
        return count

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(120)) as s:
        return await asyncio.gather(*(one(s) for _ in range(n)))


def test_concurrent_streams_through_gateway_all_complete(tmp_path):
    with (
        sim(tmp_path, "--profile", "instant", "--served-model-name", "m") as a,
        sim(tmp_path, "--profile", "instant", "--served-model-name", "m") as b,
        gateway(tmp_path, "--engine", a.url, "--engine", b.url) as gw,
    ):
        counts = asyncio.run(_streams(gw.url + "/v1/completions", 300, 64))
        assert counts == [64] * 300
        text = httpx.get(gw.url + "/metrics").text
        done = metric_value(text, "gantry_requests_total", endpoint="/v1/completions")
        assert done == 300
        assert metric_value(text, "gantry_active_requests") == 0
        # Both engines took work (least-loaded spreads it).
        for e in (a, b):
            m = httpx.get(e.url + "/metrics").text
            assert metric_value(m, "vllm:request_success_total", finished_reason="length") > 30
