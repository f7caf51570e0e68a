"""Chaos runs: steady load through a gateway while engines are broken on purpose.

Every request is classified:

* ``ok``: a complete answer (streams end with ``[DONE]`` and no error event);
* ``shed``: refused at admission with 429/503 and ``Retry-After`` (by design);
* ``failed``: an error answer — for streams, an error event then a clean ``[DONE]``;
* ``refused``: the connection was refused (the gateway had exited; never accepted);
* ``lost``: accepted but never properly answered (reset, hang past the client's limit,
  a stream cut without ``[DONE]``). A reliable gateway loses nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import aiohttp

from gantry.bench.stats import percentile


@dataclass(slots=True)
class Tally:
    sent: int = 0
    ok: int = 0
    shed: int = 0
    failed: int = 0
    refused: int = 0
    lost: int = 0
    failed_unary: int = 0
    latencies: list[float] = field(default_factory=list)  # ok requests, seconds
    peak_rss_mb: float = 0.0
    lost_reasons: dict[str, int] = field(default_factory=dict)

    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000

    def row(self, name: str) -> tuple[str, ...]:
        return (
            name,
            str(self.sent),
            str(self.ok),
            str(self.shed),
            str(self.failed),
            str(self.lost),
            f"{self.p99_ms():.0f}",
            f"{self.peak_rss_mb:.0f}",
        )

    def _lose(self, why: str) -> None:
        self.lost += 1
        self.lost_reasons[why] = self.lost_reasons.get(why, 0) + 1


HEADER = ("scenario", "sent", "succeeded", "shed", "failed", "refused", "lost", "p99 ms", "peak MB")


async def _one(
    s: aiohttp.ClientSession,
    url: str,
    model: str,
    stream: bool,
    tokens: int,
    tally: Tally,
    limit_s: float,
) -> None:
    body = {
        "model": model,
        "prompt": "chaos",
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": stream,
    }
    t0 = time.perf_counter()
    tally.sent += 1
    try:
        async with s.post(url, json=body, timeout=aiohttp.ClientTimeout(total=limit_s)) as r:
            if r.status in (429, 503):
                await r.read()
                if r.headers.get("retry-after"):
                    tally.shed += 1
                else:
                    tally.failed += 1
                return
            if r.status != 200:
                await r.read()
                tally.failed += 1
                tally.failed_unary += 0 if stream else 1
                return
            data = await r.read()
    except aiohttp.ClientConnectorError:
        tally.refused += 1
        return
    except TimeoutError:
        tally._lose("client timeout")
        return
    except (aiohttp.ClientError, ConnectionError) as exc:
        tally._lose(type(exc).__name__)
        return
    if not stream:
        tally.ok += 1
        tally.latencies.append(time.perf_counter() - t0)
        return
    if not data.endswith(b"data: [DONE]\n\n"):
        tally._lose("stream without [DONE]")
    elif b'data: {"error"' in data:
        tally.failed += 1
    else:
        tally.ok += 1
        tally.latencies.append(time.perf_counter() - t0)


async def steady_load(
    url: str,
    model: str,
    *,
    rate: float,
    duration: float,
    stream_share: float = 0.5,
    tokens: int = 32,
    limit_s: float = 30.0,
    watch_pid: int | None = None,
    seed: int = 0,
) -> Tally:
    """Open-loop Poisson arrivals for ``duration`` seconds, then wait for answers."""
    tally = Tally()
    rng = random.Random(seed)
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(watch_pid, tally, stop)) if watch_pid else None
    async with aiohttp.ClientSession(connector=conn) as s:
        tasks = []
        end = time.perf_counter() + duration
        while time.perf_counter() < end:
            stream = rng.random() < stream_share
            tasks.append(
                asyncio.create_task(
                    _one(s, url + "/v1/completions", model, stream, tokens, tally, limit_s)
                )
            )
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    stop.set()
    if sampler is not None:
        await sampler
    return tally


async def _sample_rss(pid: int | None, tally: Tally, stop: asyncio.Event) -> None:
    while not stop.is_set():
        tally.peak_rss_mb = max(tally.peak_rss_mb, rss_mb(pid))
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except TimeoutError:
            pass


def rss_mb(pid: int | None) -> float:
    """Resident memory of a process (its high-water mark when available), in MB."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return 0.0
    value = fields.get("VmHWM") or fields.get("VmRSS") or "0 kB"
    return int(value.split()[0]) / 1024
