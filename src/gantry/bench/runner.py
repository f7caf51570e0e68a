"""Run a workload against an OpenAI-compatible URL and collect per-request results."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from gantry.bench.arrivals import Schedule, send_times
from gantry.bench.client import Target, run_job
from gantry.bench.datasets import Job
from gantry.bench.stats import RequestResult
from gantry.engines.h1 import H1Transport
from gantry.engines.transport import EngineRequest
from gantry.errors import GantryError


class BenchError(Exception):
    """The run cannot start (unreachable URL, no model): one-line message."""


@dataclass(frozen=True, slots=True)
class RunSpec:
    base_url: str
    target: Target
    schedule: Schedule
    max_concurrency: int | None = None
    duration_s: float | None = None
    api_key: str | None = None


def base_of(url: str) -> str:
    u = url.rstrip("/")
    if u.endswith("/v1"):
        u = u[:-3]
    parts = urlsplit(u)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BenchError(f"--url must be an http(s) URL, got {url!r}")
    return u


async def discover_model(base_url: str, api_key: str | None) -> str:
    t = H1Transport(base_url, api_key=api_key)
    try:
        resp = await t.send(EngineRequest("GET", "/v1/models", connect_timeout=5, read_timeout=10))
        data = await resp.read()
    except GantryError as exc:
        raise BenchError(f"cannot reach {base_url}: {exc.message}") from None
    finally:
        await t.aclose()
    if resp.status == 401:
        raise BenchError(f"{base_url} refused the API key (401); pass --api-key")
    try:
        return str(orjson.loads(data)["data"][0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise BenchError(f"{base_url}/v1/models did not list a model; pass --model") from None


class Progress:
    """Counters the live display reads."""

    def __init__(self, total: int) -> None:
        self.total, self.sent, self.done, self.failed, self.tokens = total, 0, 0, 0, 0


async def run(
    spec: RunSpec,
    jobs: list[Job],
    on_progress: Callable[[Progress], None] | None = None,
) -> tuple[list[RequestResult], float]:
    transport = H1Transport(spec.base_url, api_key=spec.api_key, max_idle=4096)
    headers = {"content-type": "application/json"}
    sem = asyncio.Semaphore(spec.max_concurrency) if spec.max_concurrency else None
    prog = Progress(sum(len(j.turns) for j in jobs))
    results: list[RequestResult] = []
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    start = loop.time()

    async def one(job: Job) -> None:
        async with sem if sem is not None else contextlib.nullcontext():
            prog.sent += len(job.turns)
            for r in await run_job(transport, spec.target, job, t0, headers):
                results.append(r)
                prog.done += 1
                prog.failed += 0 if r.ok else 1
                prog.tokens += r.output_tokens

    tasks: list[asyncio.Task[None]] = []
    ticker = asyncio.create_task(_tick(prog, on_progress)) if on_progress else None
    try:
        for job, at in zip(
            jobs, send_times(spec.schedule, len(jobs), spec.duration_s), strict=False
        ):
            delay = start + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(job)))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        if ticker is not None:
            ticker.cancel()
            on_progress(prog)  # type: ignore[misc]
        await transport.aclose()
    return results, time.perf_counter() - t0


async def _tick(prog: Progress, cb: Callable[[Progress], None] | None) -> None:
    while cb is not None:
        cb(prog)
        await asyncio.sleep(0.25)


@contextlib.contextmanager
def live_progress(enabled: bool, total: int) -> Iterator[Callable[[Progress], None] | None]:
    """A Rich progress bar (sent/done/failed/tokens), or nothing."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    bar = RichProgress(
        TextColumn("[bold]bench"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        transient=True,
    )
    task = bar.add_task("run", total=total, info="")

    def update(p: Progress) -> None:
        bar.update(
            task,
            completed=p.done,
            total=p.total,
            info=f"sent {p.sent} done {p.done} failed {p.failed} tokens {p.tokens}",
        )

    with bar:
        yield update


def run_sync(spec: RunSpec, jobs: list[Job], progress: bool) -> tuple[list[RequestResult], float]:
    with live_progress(progress, sum(len(j.turns) for j in jobs)) as cb:
        return _loop_run(run(spec, jobs, cb))


def _loop_run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
