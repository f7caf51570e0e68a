"""One supervised engine: start it, wait for it to load, warm it up, watch it, restart it.

States, as ``/health`` shows them::

    starting → loading → warming → ready
        ↑          │          │        │  exited, load time-out, failed liveness
        └── backoff ┴──────────┴────────┘  (crash loop: degraded, still retried)
    warming ─ validation failed → degraded (left running, not restarted)
    any ─ stop() → stopping → stopped

The decisions (backoff, crash loop, smaller arguments after an out-of-memory) are the
pure functions of ``gantry.supervisor.policy``; this class only awaits and applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from gantry.engines.transport import EngineRequest, HTTPTransport
from gantry.errors import GantryError, LaunchError
from gantry.supervisor.config import LaunchSpec
from gantry.supervisor.gpus import GpuSource
from gantry.supervisor.launch import EnginePlan
from gantry.supervisor.memory import wait_for_free_memory
from gantry.supervisor.policy import (
    RestartState,
    after_oom,
    on_failure,
    oom_bounds,
    restart_config,
)
from gantry.supervisor.process import EngineProcess
from gantry.supervisor.warmup import WarmupResult, warm_up, warmup_sizes

log = logging.getLogger("gantry.supervisor")


class EngineState(StrEnum):
    STARTING = "starting"
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    DEGRADED = "degraded"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class EngineStatus:
    """A snapshot of one engine for ``/health`` and metrics."""

    name: str
    state: EngineState
    reason: str
    url: str
    gpus: tuple[int, ...]
    pid: int | None
    restarts: int
    oom_restarts: int
    ttft: tuple[tuple[int, float], ...]
    argv: tuple[str, ...]
    simulated: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.state.value,
            "reason": self.reason,
            "url": self.url,
            "gpus": list(self.gpus),
            "pid": self.pid,
            "restarts": self.restarts,
            "oom_restarts": self.oom_restarts,
            "warmup_ttft_s": {str(n): round(t, 4) for n, t in self.ttft},
            "argv": list(self.argv),
            "simulated": self.simulated,
        }


class EngineRunner:
    def __init__(
        self,
        plan: EnginePlan,
        spec: LaunchSpec,
        *,
        on_change: Callable[[], None] = lambda: None,
        gpu_source: GpuSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.spec = spec
        self.state = EngineState.STARTING
        self.reason = ""
        self.restarts = 0
        self.oom_restarts = 0
        self.warmup = WarmupResult(False)
        self.process: EngineProcess | None = None
        self._on_change = on_change
        self._gpus = gpu_source
        self._clock = clock
        self._stop = asyncio.Event()
        self._restart = RestartState()
        self._crash_loop = False
        self._transport = HTTPTransport(plan.url, name=plan.name)

    # -- state --------------------------------------------------------------------------
    def _set(self, state: EngineState, reason: str = "") -> None:
        if (state, reason) != (self.state, self.reason):
            self.state, self.reason = state, reason
            log.info("%s: %s%s", self.plan.name, state.value, f" ({reason})" if reason else "")
            self._on_change()

    def status(self) -> EngineStatus:
        p = self.process
        return EngineStatus(
            name=self.plan.name,
            state=self.state,
            reason=self.reason,
            url=self.plan.url,
            gpus=self.plan.gpus,
            pid=p.pid if p and p.returncode is None else None,
            restarts=self.restarts,
            oom_restarts=self.oom_restarts,
            ttft=self.warmup.ttft,
            argv=tuple(self.plan.argv),
            simulated=self.plan.simulated,
        )

    # -- lifecycle ----------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while not self._stop.is_set():
                started = self._clock()
                failure = await self._one_run()
                if self._stop.is_set():
                    break
                await self._after_failure(failure, self._clock() - started)
        finally:
            if self.process is not None:
                await self.process.stop(self.spec.stop_grace_s)
            await self._transport.aclose()
            self._set(EngineState.STOPPED)

    def stop(self) -> None:
        if self.state not in (EngineState.STOPPED,):
            self._set(EngineState.STOPPING)
        self._stop.set()

    async def _one_run(self) -> str:
        """Start the process and follow it until it fails; the failure, in words."""
        self._set(EngineState.DEGRADED if self._crash_loop else EngineState.STARTING, self.reason)
        if self.spec.wait_gpu_memory_s > 0 and self._gpus is not None:
            need = int(self.plan.derivation.budget["requested"])
            try:
                await wait_for_free_memory(
                    self._gpus, self.plan.gpus, need, timeout_s=self.spec.wait_gpu_memory_s
                )
            except LaunchError as exc:
                return str(exc)
        proc = EngineProcess(
            self.plan.name, self.plan.argv, self.plan.env, log_lines=self.spec.log_lines
        )
        self.process = proc
        await proc.start()
        if not self._crash_loop:
            self._set(EngineState.LOADING)
        exited = asyncio.create_task(proc.wait())
        try:
            failure = await self._follow(proc, exited)
        finally:
            if not exited.done():
                await proc.stop(self.spec.stop_grace_s)
            exited.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await exited
        return failure

    async def _follow(self, proc: EngineProcess, exited: asyncio.Task[int]) -> str:
        up = await self._until(exited, self._healthy, self.spec.load_timeout_s)
        if not up:
            return self._exit_reason(proc, exited, f"not up after {self.spec.load_timeout_s:g} s")
        self._set(EngineState.WARMING)
        self.warmup = await self._warm()
        if not self.warmup.ok:
            self._set(EngineState.DEGRADED, self.warmup.reason)
        else:
            self._crash_loop = False
            self._set(EngineState.READY)
        failures = 0
        while not self._stop.is_set():
            ok = await self._until(exited, self._healthy, self.spec.liveness_interval_s)
            if exited.done():
                return self._exit_reason(proc, exited, "")
            if ok is None:  # timed out: the health check never succeeded in the interval
                failures += 1
                if failures >= self.spec.liveness_failures:
                    return f"no answer on /health {failures} times in a row"
            else:
                failures = 0
                await self._sleep(self.spec.liveness_interval_s, exited)
        return ""

    def _exit_reason(self, proc: EngineProcess, exited: asyncio.Task[int], other: str) -> str:
        if exited.done() and not exited.cancelled():
            last = proc.tail(1)
            return f"exited with {exited.result()}" + (f": {last[0][:200]}" if last else "")
        return other

    async def _sleep(self, seconds: float, exited: asyncio.Task[int]) -> None:
        stop = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({stop, exited}, timeout=seconds, return_when="FIRST_COMPLETED")
        finally:
            stop.cancel()

    async def _until(
        self, exited: asyncio.Task[int], check: Callable[[], Awaitable[bool]], within_s: float
    ) -> bool | None:
        """Poll ``check`` until it passes (True), the process exits or a stop is asked
        (False), or ``within_s`` passes (None)."""
        deadline = self._clock() + within_s
        while not exited.done() and not self._stop.is_set():
            if await check():
                return True
            if self._clock() >= deadline:
                return None
            await self._sleep(min(0.25, max(0.0, deadline - self._clock())), exited)
        return False if exited.done() or self._stop.is_set() else None

    async def _healthy(self) -> bool:
        try:
            resp = await self._transport.send(
                EngineRequest("GET", "/health", connect_timeout=2, read_timeout=5)
            )
            await resp.read()
            return resp.status == 200
        except (GantryError, TimeoutError, OSError):
            return False

    async def _warm(self) -> WarmupResult:
        w = self.spec.warmup
        if not w.enabled:
            return WarmupResult(True, "warm-up disabled")
        sizes = warmup_sizes(w.prompt_tokens, self.plan.args.max_model_len, w.max_tokens)
        result = await warm_up(
            self._transport,
            self.plan.served_name,
            sizes=sizes,
            max_tokens=w.max_tokens,
            timeout_s=w.timeout_s,
        )
        if result.ok:
            said = ", ".join(f"{n} tokens {t * 1000:.0f} ms" for n, t in result.ttft)
            log.info("%s: warm-up passed (time to first token: %s)", self.plan.name, said)
        return result

    async def _after_failure(self, failure: str, ran_for: float) -> None:
        proc = self.process
        oom = proc.oom if proc else None
        if oom is not None:
            decision = after_oom(
                self.plan.args, oom, self.plan.derivation.pinned, oom_bounds(self.spec.oom)
            )
            if decision.args is not None:
                self.plan = self.plan.with_args(decision.args)
                self.oom_restarts += 1
                log.warning("%s: out of GPU memory: %s", self.plan.name, decision.message)
            else:
                log.error("%s: out of GPU memory: %s", self.plan.name, decision.message)
            failure = f"{failure}; {decision.message}"
        self._restart, d = on_failure(
            self._restart, restart_config(self.spec.restart), now=self._clock(), ran_for=ran_for
        )
        self.restarts += 1
        if d.crash_loop and not self._crash_loop:
            log.error(
                "%s: crash loop (%d failures in %.0f s), degraded; last: %s",
                self.plan.name,
                len(self._restart.recent),
                self.spec.restart.crash_loop_window_s,
                failure,
            )
        self._crash_loop = self._crash_loop or d.crash_loop
        state = EngineState.DEGRADED if self._crash_loop else EngineState.STARTING
        self._set(state, f"{failure}; restarting in {d.delay_s:g} s")
        log.warning("%s: %s; restarting in %g s", self.plan.name, failure, d.delay_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), d.delay_s)

    def __repr__(self) -> str:
        return f"<EngineRunner {self.plan.name} {self.state.value} restarts={self.restarts}>"


__all__ = ["EngineRunner", "EngineState", "EngineStatus"]
