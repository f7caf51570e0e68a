"""The simulated engine: an asyncio loop that runs engine-core steps in real time.

Each step (``EngineCore.step``): the scheduler decides the batch, the latency model
gives its duration, the scheduler applies it; the loop sleeps until the step's end on
a model clock (so time lost to the event loop is caught up on the next steps,
bounded), then delivers each request's output. ``gantry.sim.virtual`` runs the same
core without sleeping.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from gantry.sim.core import EngineConfig, EngineCore
from gantry.sim.kvcache import KVEvent
from gantry.sim.latency import LatencyModel
from gantry.sim.lora import LoraMetrics
from gantry.sim.metrics import SimMetrics
from gantry.sim.scheduler import ScheduledStep
from gantry.sim.sequence import SimRequest, Status, StepOutput

_MAX_LAG_S = 0.25  # catch up at most this much lost wall-clock time


class EngineState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class RequestStream:
    """Per-request delivery channel: the engine pushes, the HTTP handler awaits."""

    __slots__ = ("_items", "_waiter", "closed", "req")

    def __init__(self, req: SimRequest) -> None:
        self.req = req
        self._items: deque[StepOutput] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def push(self, item: StepOutput) -> None:
        self._items.append(item)
        if item.finish_reason is not None:
            self.closed = True
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def next_batch(self) -> list[StepOutput]:
        """Everything produced since the last call (several tokens if we fell behind)."""
        while not self._items:
            if self.closed:
                return []
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        items = list(self._items)
        self._items.clear()
        return items


class SimEngine:
    def __init__(
        self,
        config: EngineConfig,
        latency: LatencyModel,
        metrics: SimMetrics,
        *,
        on_kv_events: Callable[[list[KVEvent]], None] | None = None,
    ) -> None:
        self.config = config
        self.latency = latency
        self.metrics = metrics
        self.core = EngineCore(config, latency)
        self.kv = self.core.kv
        self.kv.collect_events = on_kv_events is not None
        self.scheduler = self.core.scheduler
        self._on_kv_events = on_kv_events
        self._streams: dict[int, RequestStream] = {}  # bounded by admitted requests
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.state = EngineState.NEW
        self.lora_metrics: LoraMetrics | None = None  # vllm:lora_requests_info, LoRA on
        self._deferred = 0  # waiting requests the last step skipped (LoRA budget)

    @property
    def slowdown(self) -> float:
        """Fault injection: every step time is multiplied by this."""
        return self.core.slowdown

    @slowdown.setter
    def slowdown(self, value: float) -> None:
        self.core.slowdown = value

    async def __aenter__(self) -> SimEngine:
        self._task = asyncio.create_task(self._run(), name="sim-engine")
        self.state = EngineState.RUNNING
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self.state = EngineState.STOPPED
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for stream in list(self._streams.values()):
            self.abort(stream)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def add(self, req: SimRequest) -> RequestStream:
        stream = RequestStream(req)
        self._streams[id(req)] = stream
        self.scheduler.add(req)
        self._set_gauges()
        self._wake.set()
        return stream

    def abort(self, stream: RequestStream) -> None:
        req = stream.req
        self._streams.pop(id(req), None)
        if self.scheduler.abort(req):
            self._record_finish(req, time.monotonic())
            stream.push(StepOutput("", 0, "abort"))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        virtual = loop.time()
        speed = max(self.config.speedup, 1e-9)
        m = self.metrics
        prev: tuple[float, float] | None = None  # (start, modelled dt) of the last busy step
        while True:
            if not self.scheduler.has_work:
                self._wake.clear()
                prev = None
                await self._wake.wait()
                virtual = loop.time()
            start = loop.time()
            if prev is not None:
                # Step period = start-to-start of back-to-back steps (delivery included).
                m.step_model_l.inc(prev[1])
                m.step_wall_l.inc(start - prev[0])
            done = self.core.step()
            step, outputs = done.step, done.outputs
            dt = done.duration / speed
            virtual = max(virtual + dt, start + dt - _MAX_LAG_S)
            delay = virtual - loop.time()
            await asyncio.sleep(delay if delay > 0 else 0)
            m.steps.inc()
            prev = (start, dt)
            self._account(step, outputs, time.monotonic())

    def _account(
        self, step: ScheduledStep, outputs: list[tuple[SimRequest, StepOutput]], now: float
    ) -> None:
        m = self.metrics
        if step.cache_query_tokens:
            m.prefix_queries_l.inc(step.cache_query_tokens)
            m.prefix_hits_l.inc(step.cache_hit_tokens)
        if step.preempted:
            m.preemptions_l.inc(len(step.preempted))
        self._deferred = step.deferred
        for req, _ in step.items:
            if req.first_scheduled is None:
                req.first_scheduled = now
        gen = prompt = cached = external = 0
        for req, out in outputs:
            gen += 1
            if req.first_token is None:
                # v1/metrics/stats.py::IterationStats: a prompt counts whole (cached
                # tokens included) in the step that ends its prefill.
                prompt += req.num_prompt_tokens
                cached += max(0, req.num_cached_prompt)
                external += min(req.num_external_prompt, max(0, req.num_cached_prompt))
                req.first_token = now
                m.ttft_l.observe(now - req.arrival)
            elif req.last_token is not None:
                m.itl_l.observe(now - req.last_token)
            req.last_token = now
            if out.finish_reason is not None:
                self._record_finish(req, now)
            stream = self._streams.get(id(req))
            if stream is not None:
                stream.push(out)
                if out.finish_reason is not None:
                    del self._streams[id(req)]
        if gen:
            m.generation_tokens_l.inc(gen)
            m.prompt_tokens_l.inc(prompt)
            if prompt:
                # PromptTokenStats: computed + local hit + external = the whole prompt.
                m.prompt_by_source_l["local_compute"].inc(prompt - cached)
                m.prompt_by_source_l["local_cache_hit"].inc(cached - external)
                m.prompt_by_source_l["external_kv_transfer"].inc(external)
                m.prompt_cached_l.inc(cached)
            # loggers.py: iteration_tokens_total observes prompt + generation tokens.
            m.iteration_tokens_l.observe(prompt + gen)
        self._set_gauges()
        if self.lora_metrics is not None:
            s = self.scheduler
            self.lora_metrics.update((r.lora for r in s.running), (r.lora for r in s.waiting))
        if self._on_kv_events is not None and self.kv.events:
            self._on_kv_events(self.kv.take_events())

    def _record_finish(self, req: SimRequest, now: float) -> None:
        m = self.metrics
        reason = req.finish_reason or "abort"
        m.success_l[reason].inc()
        m.e2e_l.observe(now - req.arrival)
        m.req_prompt_tokens_l.observe(req.num_prompt_tokens)
        n_out = len(req.output_token_ids)
        m.req_gen_tokens_l.observe(n_out)
        m.req_max_tokens_l.observe(req.sampling.max_tokens)
        if req.first_scheduled is not None:
            m.queue_time_l.observe(req.first_scheduled - req.arrival)
            m.inference_time_l.observe(now - req.first_scheduled)
            if req.first_token is not None:
                m.prefill_time_l.observe(req.first_token - req.first_scheduled)
                m.decode_time_l.observe(now - req.first_token)
                if n_out > 1:
                    m.tpot_l.observe((now - req.first_token) / (n_out - 1))
        m.req_preemptions_l.observe(req.num_preemptions)
        if req.num_cached_prompt >= 0:  # it was scheduled: its prefill KV was computed
            m.req_prefill_kv_l.observe(req.num_prompt_tokens - req.num_cached_prompt)
        # parallel_sampling.py::ParentRequest: once per request, when its last choice ends.
        most = n_out if req.parent is None else req.parent.finish_child(n_out)
        if most is not None:
            m.req_n_l.observe(1 if req.parent is None else req.parent.n)
            m.req_max_gen_l.observe(most)
        self._set_gauges()

    def _set_gauges(self) -> None:
        m = self.metrics
        waiting = self.num_waiting
        deferred = min(self._deferred, waiting)
        m.running_l.set(self.num_running)
        m.waiting_l.set(waiting)
        m.waiting_by_reason_l["capacity"].set(waiting - deferred)
        m.waiting_by_reason_l["deferred"].set(deferred)
        m.kv_usage_l.set(self.kv.usage)

    def __repr__(self) -> str:
        return (
            f"<SimEngine {self.config.model_name} state={self.state.value} "
            f"running={self.num_running} waiting={self.num_waiting} {self.kv!r}>"
        )


async def merge_streams(
    streams: list[RequestStream], *, stopped: Callable[[], Exception] | None = None
) -> AsyncIterator[tuple[RequestStream, list[StepOutput]]]:
    """(stream, outputs) as any of the streams produces, until all have finished. A
    stream whose engine stopped (an empty batch) ends there, or raises ``stopped()``."""

    def ended(batch: list[StepOutput]) -> bool:
        if not batch and stopped is not None:
            raise stopped()
        return not batch or batch[-1].finish_reason is not None

    if len(streams) == 1:
        s = streams[0]
        while True:
            batch = await s.next_batch()
            if batch:
                yield s, batch
            if ended(batch):
                return
    # one pending batch per stream: bounded
    queue: asyncio.Queue[tuple[RequestStream, list[StepOutput]]] = asyncio.Queue(len(streams))

    async def pump(s: RequestStream) -> None:
        while True:
            batch = await s.next_batch()
            await queue.put((s, batch))
            if not batch or batch[-1].finish_reason is not None:
                return

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        left = len(streams)
        while left:
            s, batch = await queue.get()
            if batch:
                yield s, batch
            if ended(batch):
                left -= 1
    finally:
        for t in tasks:
            t.cancel()


__all__ = ["EngineConfig", "EngineState", "RequestStream", "SimEngine", "Status", "merge_streams"]
