"""Wait for free GPU memory: poll until every GPU asked for has ``need`` bytes free, or
time out. A restarted engine's predecessor (or another job) may still be letting go of
its memory; starting vLLM before then fails its start-up memory check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from gantry.errors import LaunchError
from gantry.sim.profiles import GiB
from gantry.supervisor.gpus import GpuSample, GpuSource


def short_of(samples: Sequence[GpuSample], need: int) -> list[GpuSample]:
    """The GPUs with less than ``need`` bytes free."""
    return [s for s in samples if s.memory_free < need]


async def wait_for_free_memory(
    source: GpuSource,
    gpus: Sequence[int],
    need: int,
    *,
    timeout_s: float,
    interval_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> list[GpuSample]:
    """The samples once every GPU in ``gpus`` has ``need`` bytes free; ``LaunchError``
    (one line naming the shortest GPU) after ``timeout_s``."""
    deadline = clock() + timeout_s
    while True:
        samples = await asyncio.to_thread(lambda: [source.sample(i) for i in gpus])
        short = short_of(samples, need)
        if not short:
            return samples
        if clock() >= deadline:
            worst = min(short, key=lambda s: s.memory_free)
            raise LaunchError(
                f"GPU {worst.index} has {worst.memory_free / GiB:.1f} GiB free after "
                f"{timeout_s:g} s, {need / GiB:.1f} GiB needed"
            )
        await sleep(interval_s)


__all__ = ["short_of", "wait_for_free_memory"]
