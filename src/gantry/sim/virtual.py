"""Virtual time: the simulated engine as a discrete-event simulation, in-process.

The same ``EngineCore`` as ``gantry sim`` (scheduler, KV cache, latency model) runs
step after step, but instead of sleeping until each step's modelled end the clock
jumps there. Idle time is skipped to the next arrival. Minutes of load take seconds
of CPU, with no event loop and no sockets, so a planner can try many rates and
engine arguments.

Timestamps follow the real-time engine: a request arrives, spends the API server's
overhead, joins the waiting queue, and its first token (and every later one) is
delivered at the end of the step that produced it.

Bounded: arrivals are consumed lazily, finished requests are reduced to a small
timing record, at most ``max_requests`` are taken, and the run stops early as
overloaded when the waiting queue passes ``max_waiting`` (the queue would grow
without bound at that rate).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from gantry.sim.core import EngineConfig, EngineCore
from gantry.sim.latency import LatencyModel
from gantry.sim.sequence import SamplingSpec, SimRequest, StepOutput
from gantry.sim.settings import ResolvedSim
from gantry.sim.tokenizer import BuiltinTokenizer, Tokenizer


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request of a workload: when it arrives and what it asks for."""

    time: float  # seconds from the start
    prompt: list[int]  # token ids
    max_tokens: int
    ignore_eos: bool = True  # benchmarks' default: exactly max_tokens are generated


@dataclass(frozen=True, slots=True)
class Limits:
    max_requests: int = 100_000  # arrivals taken at most (results kept per request)
    max_waiting: int = 5_000  # waiting queue beyond this: overloaded, stop
    max_steps: int = 10_000_000


@dataclass(frozen=True, slots=True)
class Timing:
    """What a finished request saw, in seconds (``vllm bench serve``'s definitions)."""

    arrival: float
    ttft: float
    e2el: float
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int

    @property
    def tpot(self) -> float | None:
        if self.output_tokens > 1:
            return (self.e2el - self.ttft) / (self.output_tokens - 1)
        return None


@dataclass(slots=True)
class VirtualResult:
    timings: list[Timing] = field(default_factory=list)
    duration: float = 0.0  # virtual seconds from the first arrival to the last finish
    steps: int = 0
    preemptions: int = 0
    overloaded: bool = False  # stopped early: the waiting queue grew past the limit
    unfinished: int = 0
    peak_running: int = 0
    peak_kv_usage: float = 0.0
    wall_seconds: float = 0.0

    @property
    def completed(self) -> int:
        return len(self.timings)

    @property
    def request_throughput(self) -> float:
        return self.completed / self.duration if self.duration > 0 else 0.0

    @property
    def output_throughput(self) -> float:
        out = sum(t.output_tokens for t in self.timings)
        return out / self.duration if self.duration > 0 else 0.0

    @property
    def speed(self) -> float:
        """Simulated seconds per wall-clock second."""
        return self.duration / self.wall_seconds if self.wall_seconds > 0 else math.inf

    def values(self, metric: str) -> list[float]:
        """Seconds per request for ``ttft``, ``tpot`` or ``e2el``."""
        if metric == "tpot":
            return [v for t in self.timings if (v := t.tpot) is not None]
        if metric in ("ttft", "e2el"):
            return [getattr(t, metric) for t in self.timings]
        raise ValueError(f"unknown metric {metric!r}: ttft, tpot or e2el")

    def percentile(self, metric: str, p: float) -> float:
        """Linear interpolation between closest ranks (numpy's default), in seconds."""
        s = sorted(self.values(metric))
        if not s:
            return math.inf
        k = (len(s) - 1) * p / 100
        lo, hi = math.floor(k), math.ceil(k)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)


class VirtualEngine:
    """One engine in virtual time. ``run()`` may be called once per engine."""

    def __init__(
        self,
        config: EngineConfig,
        latency: LatencyModel,
        *,
        tokenizer: Tokenizer | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.core = EngineCore(config, latency)
        self.tokenizer = tokenizer or BuiltinTokenizer()
        self.limits = limits or Limits()
        self.now = 0.0

    @classmethod
    def from_resolved(cls, r: ResolvedSim, *, limits: Limits | None = None) -> VirtualEngine:
        """An engine with exactly the arguments ``gantry sim`` would run with."""
        config = r.engine_config(speedup=1.0)
        return cls(config, r.latency_model(), limits=limits)

    def run(self, arrivals: Iterable[Arrival], *, concurrency: int | None = None) -> VirtualResult:
        """Feed ``arrivals`` (in time order) and step until every request is done.

        ``concurrency``: a closed loop instead (``--max-concurrency`` with every request
        sent at once): at most that many requests in flight, the next one sent the
        moment one finishes; the arrivals' own times are then ignored."""
        wall = time.perf_counter()
        res = VirtualResult()
        core, lim = self.core, self.limits
        sched = core.scheduler
        lat = core.latency

        def ready(a: Arrival) -> float:  # when the API server hands ``a`` to the engine
            return a.time + lat.request_overhead_at(len(sched.running))

        source = _ordered(arrivals, lim.max_requests)
        slots = _Slots(source, concurrency)
        nxt = slots.peek(0.0)
        first = nxt.time if nxt is not None else 0.0
        self.now = first
        index = 0
        while nxt is not None or core.has_work:
            if not core.has_work and nxt is not None:
                self.now = max(self.now, ready(nxt))  # idle: jump to the arrival
            while nxt is not None and ready(nxt) <= self.now:
                core.add(self._request(nxt, index))
                index += 1
                nxt = slots.take(self.now)
            if len(sched.waiting) > lim.max_waiting or res.steps >= lim.max_steps:
                res.overloaded = True
                break
            done = core.step()
            res.steps += 1
            if done.step.num_tokens == 0:  # nothing fits (a prompt larger than the cache)
                if nxt is None:
                    break
                self.now = max(self.now, ready(nxt))
                continue
            self.now += done.duration
            res.preemptions += len(done.step.preempted)
            res.peak_running = max(res.peak_running, len(sched.running))
            res.peak_kv_usage = max(res.peak_kv_usage, core.kv.usage)
            finished = self._deliver(done.outputs, res)
            if finished:
                nxt = slots.release(finished, self.now)
        res.unfinished = len(sched.running) + len(sched.waiting)
        res.duration = (self.now - first) if res.timings else 0.0
        res.wall_seconds = time.perf_counter() - wall
        return res

    def _request(self, a: Arrival, index: int) -> SimRequest:
        spec = SamplingSpec(max_tokens=a.max_tokens, ignore_eos=a.ignore_eos, seed=index)
        return SimRequest(
            request_id=str(index),
            prompt_token_ids=a.prompt,
            sampling=spec,
            tokenizer=self.tokenizer,
            arrival=a.time,
            index=index,
        )

    def _deliver(self, outputs: list[tuple[SimRequest, StepOutput]], res: VirtualResult) -> int:
        now = self.now
        finished = 0
        for req, _ in outputs:
            if req.first_token is None:
                req.first_token = now
            if req.finish_reason is not None:
                ttft = req.first_token - req.arrival
                res.timings.append(
                    Timing(
                        req.arrival,
                        ttft,
                        now - req.arrival,
                        req.num_prompt_tokens,
                        len(req.output_token_ids),
                        max(0, req.num_cached_prompt),
                    )
                )
                finished += 1
        return finished


class _Slots:
    """The next arrival: the source's own (open loop), or, in a closed loop, the next
    request sent when one of ``concurrency`` slots is free, at that moment."""

    def __init__(self, source: Iterator[Arrival], concurrency: int | None) -> None:
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._source, self._limit = source, concurrency
        self._in_flight = 0
        self._next: Arrival | None = None

    def peek(self, now: float) -> Arrival | None:
        if self._next is None:
            if self._limit is None:
                self._next = next(self._source, None)
            elif self._in_flight < self._limit:
                a = next(self._source, None)
                if a is not None:
                    self._in_flight += 1
                    self._next = Arrival(now, a.prompt, a.max_tokens, a.ignore_eos)
        return self._next

    def take(self, now: float) -> Arrival | None:
        self._next = None
        return self.peek(now)

    def release(self, finished: int, now: float) -> Arrival | None:
        self._in_flight -= finished
        return self.peek(now)


def _ordered(arrivals: Iterable[Arrival], limit: int) -> Iterator[Arrival]:
    last = -math.inf
    for i, a in enumerate(arrivals):
        if i >= limit:
            return
        if a.time < last:
            raise ValueError("arrivals must be in time order")
        last = a.time
        yield a


__all__ = ["Arrival", "Limits", "Timing", "VirtualEngine", "VirtualResult"]
