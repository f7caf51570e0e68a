"""``EngineSupervisor``: the engines of one ``LaunchSpec``, their GPUs' samples and the
status endpoint, under one async context manager::

    plan, detection = prepare(LaunchSpec(model="llama-3.1-8b", gpus=(0, 1)))
    async with EngineSupervisor(plan, spec, detection=detection) as sup:
        engines = await sup.wait_ready(timeout_s=600)   # [EngineSpec(url=..., name=...)]
        ...                                              # serve; engines restart on failure

Leaving the block stops every engine (SIGTERM, grace, SIGKILL) and closes NVML.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

from gantry.config import EngineSpec
from gantry.errors import LaunchError
from gantry.supervisor.config import LaunchSpec
from gantry.supervisor.gpus import Detection, GpuSample, GpuSource, detect
from gantry.supervisor.launch import LaunchPlan, plan_launch
from gantry.supervisor.metrics import registry_for
from gantry.supervisor.model import load_model
from gantry.supervisor.runner import EngineRunner, EngineState, EngineStatus
from gantry.supervisor.status import StatusServer

log = logging.getLogger("gantry.supervisor")


def prepare(
    spec: LaunchSpec,
    *,
    open_gpus: Callable[[], GpuSource] | None = None,
    hf_cache: Path | None = None,
) -> tuple[LaunchPlan, Detection]:
    """Detect GPUs, find vLLM, read the model and derive the plan (``ConfigError``,
    ``DoesNotFit`` or ``LaunchError`` in one line when it cannot work)."""
    model = load_model(spec.model, hf_cache=hf_cache)
    detection = detect(open_gpus)
    free: dict[int, int] = {}
    if detection.source is not None:
        free = {d.index: detection.source.sample(d.index).memory_free for d in detection.devices}
    vllm = shutil.which(spec.vllm_bin)
    try:
        plan = plan_launch(spec, model, detection, vllm=vllm, free=free)
    except BaseException:
        if detection.source is not None:
            detection.source.close()
        raise
    return plan, detection


class SupervisorState(StrEnum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class EngineSupervisor:
    def __init__(
        self,
        plan: LaunchPlan,
        spec: LaunchSpec,
        *,
        detection: Detection | None = None,
        status_host: str = "127.0.0.1",
        status_port: int | None = None,
        sample_interval_s: float = 5.0,
    ) -> None:
        self.plan = plan
        self.spec = spec
        self.detection = detection or Detection(())
        self.state = SupervisorState.NEW
        self._changed = asyncio.Event()
        source = self.detection.source
        self.runners = [
            EngineRunner(e, spec, on_change=self._changed.set, gpu_source=source)
            for e in plan.engines
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self._samples: dict[int, GpuSample] = {}  # the latest per GPU: bounded by GPU count
        self._sample_interval = sample_interval_s
        self.registry = registry_for(self._snapshot)
        self.status_server = (
            StatusServer(self.health, self.registry, host=status_host, port=status_port)
            if status_port is not None
            else None
        )

    async def __aenter__(self) -> EngineSupervisor:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self.state is not SupervisorState.NEW:
            raise RuntimeError(f"supervisor already {self.state.value}")
        self.state = SupervisorState.RUNNING
        if self.plan.simulated:
            log.warning(
                "SIMULATED engines (%s): %d x %s",
                self.plan.reason,
                len(self.runners),
                self.plan.model.name,
            )
        if self.status_server is not None:
            await self.status_server.start()
            log.info("supervisor status on %s/health and /metrics", self.status_server.url)
        if self.detection.source is not None:
            await self._sample_once()
            self._tasks.append(asyncio.create_task(self._sampler(), name="gpu-sampler"))
        for r in self.runners:
            self._tasks.append(asyncio.create_task(r.run(), name=r.plan.name))

    async def stop(self) -> None:
        if self.state in (SupervisorState.STOPPING, SupervisorState.STOPPED):
            return
        self.state = SupervisorState.STOPPING
        for r in self.runners:
            r.stop()
        for t in self._tasks:
            if t.get_name() == "gpu-sampler":
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.status_server is not None:
            await self.status_server.stop()
        if self.detection.source is not None:
            self.detection.source.close()
        self.state = SupervisorState.STOPPED
        log.info("supervisor stopped %d engine(s)", len(self.runners))

    # -- what the gateway and the status endpoint read ----------------------------------
    def endpoints(self) -> list[EngineSpec]:
        """Every engine's address (stable across restarts: same host and port)."""
        return [r.plan.spec() for r in self.runners]

    def statuses(self) -> list[EngineStatus]:
        return [r.status() for r in self.runners]

    def health(self) -> tuple[bool, dict[str, Any]]:
        engines = self.statuses()
        ready = bool(engines) and all(e.state is EngineState.READY for e in engines)
        body = {
            "state": _overall(engines),
            "simulated": self.plan.simulated,
            "reason": self.plan.reason,
            "model": self.plan.model.requested,
            "engines": [e.as_dict() for e in engines],
        }
        return ready, body

    async def wait_ready(
        self, timeout_s: float, *, allow_degraded: bool = False
    ) -> list[EngineSpec]:
        """Return the engines once every one is ready. ``LaunchError`` after ``timeout_s``,
        or at once when one is degraded (unless ``allow_degraded``: then the ready ones)."""

        async def ready() -> list[EngineSpec]:
            while True:
                self._changed.clear()
                states = [r.state for r in self.runners]
                if all(s is EngineState.READY for s in states):
                    return self.endpoints()
                if EngineState.DEGRADED in states and not allow_degraded:
                    bad = next(r for r in self.runners if r.state is EngineState.DEGRADED)
                    raise LaunchError(f"engine {bad.plan.name} is degraded: {bad.reason}")
                if (
                    allow_degraded
                    and all(s in (EngineState.READY, EngineState.DEGRADED) for s in states)
                    and EngineState.READY in states
                ):
                    return [r.plan.spec() for r in self.runners if r.state is EngineState.READY]
                if self.state is not SupervisorState.RUNNING:
                    raise LaunchError("the supervisor stopped before its engines were ready")
                await self._changed.wait()

        try:
            return await asyncio.wait_for(ready(), timeout_s)
        except TimeoutError:
            said = ", ".join(f"{r.plan.name} {r.state.value}" for r in self.runners)
            raise LaunchError(f"engines not ready after {timeout_s:g} s: {said}") from None

    # -- GPU samples ------------------------------------------------------------------
    async def _sample_once(self) -> None:
        source = self.detection.source
        if source is None:
            return
        devices = self.detection.devices
        try:
            samples = await asyncio.to_thread(lambda: [source.sample(d.index) for d in devices])
        except Exception as exc:  # a GPU that fell off the bus must not stop the engines
            log.warning("GPU sample failed: %s", exc)
            return
        self._samples = {s.index: s for s in samples}

    async def _sampler(self) -> None:
        while True:
            await asyncio.sleep(self._sample_interval)
            await self._sample_once()

    def _snapshot(self) -> tuple[Any, dict[int, GpuSample], list[EngineStatus]]:
        return self.detection.devices, dict(self._samples), self.statuses()

    def __repr__(self) -> str:
        said = ", ".join(f"{r.plan.name}={r.state.value}" for r in self.runners)
        return f"<EngineSupervisor {self.state.value} {said}>"


_ORDER = [EngineState.STARTING, EngineState.LOADING, EngineState.WARMING, EngineState.READY]


def _overall(engines: list[EngineStatus]) -> str:
    states = [e.state for e in engines]
    if not states:
        return EngineState.STOPPED.value
    if EngineState.DEGRADED in states:
        return EngineState.DEGRADED.value
    for s in (EngineState.STOPPING, EngineState.STOPPED):
        if s in states:
            return s.value
    return min(states, key=_ORDER.index).value


__all__ = ["EngineSupervisor", "SupervisorState", "prepare"]
