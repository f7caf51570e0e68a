"""GPU memory helpers for in-process mode, through the supervisor's ``GpuSource`` (NVML
on a real machine, recorded answers in tests)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gantry.client._errors import ClientSDKError

GiB = 1024**3


class GpuMemoryError(ClientSDKError):
    """Not enough free GPU memory in time, or no GPU to ask."""


@dataclass(frozen=True, slots=True)
class GpuMemory:
    index: int
    used: int  # bytes
    total: int

    @property
    def free(self) -> int:
        return max(0, self.total - self.used)

    @property
    def utilization(self) -> float:
        """Memory in use, 0..1."""
        return self.used / self.total if self.total else 0.0


class GpuMonitor:
    """``stats()``, ``has_free()`` and ``wait_for_free()`` over a ``GpuSource``
    (detected with NVML when none is given)."""

    def __init__(self, source: Any = None) -> None:
        self._source = source
        self._reason = ""

    def _open(self) -> Any:
        if self._source is None:
            from gantry.supervisor.gpus import detect

            found = detect()
            if found.source is None:
                self._reason = found.reason or "no GPU"
                raise GpuMemoryError(f"no GPU to monitor: {self._reason}")
            self._source = found.source
        return self._source

    def count(self) -> tuple[int, str]:
        try:
            n = len(self._open().devices())
        except GpuMemoryError:
            return 0, self._reason
        return n, f"{n} GPU(s)"

    def stats(self) -> list[GpuMemory]:
        src = self._open()
        return [_memory(src.sample(d.index)) for d in src.devices()]

    def has_free(self, gib: float, gpu: int = 0) -> bool:
        return _memory(self._open().sample(gpu)).free >= gib * GiB

    async def wait_for_free(
        self,
        gib: float,
        gpus: Sequence[int] = (0,),
        *,
        timeout_s: float = 300.0,
        interval_s: float = 1.0,
    ) -> list[GpuMemory]:
        from gantry.errors import LaunchError
        from gantry.supervisor.memory import wait_for_free_memory

        try:
            samples = await wait_for_free_memory(
                self._open(), gpus, int(gib * GiB), timeout_s=timeout_s, interval_s=interval_s
            )
        except LaunchError as exc:
            raise GpuMemoryError(str(exc)) from None
        return [_memory(s) for s in samples]

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None


def _memory(sample: Any) -> GpuMemory:
    return GpuMemory(sample.index, sample.memory_used, sample.memory_total)


__all__ = ["GpuMemory", "GpuMemoryError", "GpuMonitor"]
