"""Per-replica capacity: the highest request rate at which one engine meets an SLO.

Pure search over virtual-time runs of one workload:

1. **Alone**: a few requests one at a time. If these miss the SLO, no rate meets it
   (``ImpossibleSlo``, with the figures).
2. **Saturated**: every request at once. The completed requests per second bound the
   sustainable rate from above (an engine kept full cannot finish more); a short run
   offered more than that would still pass, its queue not having had time to grow.
3. **Bisection** between 0 and that bound, each probe a full run of the workload at
   the probe's rate (the same seed: the same arrivals, scaled), until the bracket is
   narrower than ``precision`` of the bound.

Requests that are still queued when the workload ends count: a run stopped as
overloaded misses every SLO.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from gantry.errors import ImpossibleSlo
from gantry.planner.slo import Target
from gantry.planner.workload import Workload
from gantry.sim.settings import ResolvedSim
from gantry.sim.virtual import Limits, VirtualEngine, VirtualResult

ALONE = 8  # requests measured one at a time
ALONE_GAP_S = 3600.0  # far enough apart never to overlap (idle time costs nothing)


@dataclass(frozen=True, slots=True)
class Probe:
    """One virtual run: the rate offered and what it gave."""

    rate: float
    ok: bool
    achieved: float  # completed requests per second
    output_tps: float
    values: dict[str, float]  # SLO label -> seconds
    overloaded: bool
    wall_s: float
    sim_s: float


@dataclass(frozen=True, slots=True)
class Capacity:
    rate: float  # requests/s one replica sustains within the SLO (0: none)
    at_rate: Probe | None  # the run at that rate
    saturated: Probe
    alone: Probe
    probes: tuple[Probe, ...] = field(default=())

    @property
    def output_tps(self) -> float:
        return self.at_rate.output_tps if self.at_rate else 0.0

    @property
    def sim_seconds(self) -> float:
        """Virtual seconds of load simulated (the idle gaps of the alone run skipped)."""
        return sum(p.sim_s for p in (self.saturated, *self.probes))

    @property
    def wall_seconds(self) -> float:
        return sum(p.wall_s for p in (self.alone, self.saturated, *self.probes))


def measure(result: VirtualResult, slo: tuple[Target, ...], rate: float) -> Probe:
    values = {t.label: result.percentile(t.metric, t.percentile) for t in slo}
    ok = (
        not result.overloaded
        and result.unfinished == 0
        and result.completed > 0
        and all(values[t.label] <= t.seconds for t in slo)
    )
    return Probe(
        rate,
        ok,
        result.request_throughput,
        result.output_throughput,
        values,
        result.overloaded,
        result.wall_seconds,
        result.duration,
    )


def run(resolved: ResolvedSim, workload: Workload, rate: float, limits: Limits) -> VirtualResult:
    return VirtualEngine.from_resolved(resolved, limits=limits).run(workload.arrivals(rate))


def search(
    alone: Callable[[], Probe],
    at: Callable[[float], Probe],
    slo: tuple[Target, ...],
    *,
    where: str,
    precision: float = 0.02,
) -> Capacity:
    """The search itself, over any way of running a workload at a rate (virtual time
    here, real engines in ``gantry.planner.real``). ``at(math.inf)``: all at once."""
    first = alone()
    if not first.ok:
        missed = ", ".join(
            f"{t.label} is {first.values[t.label] * 1000:.0f} ms > {t.seconds * 1000:g} ms"
            for t in slo
            if not first.values[t.label] <= t.seconds
        )
        raise ImpossibleSlo(
            f"no rate meets the SLO on {where}: even one request at a time, {missed}"
        )
    sat = at(math.inf)
    lo, hi, best = 0.0, sat.achieved, None
    probes = []
    while hi - lo > precision * sat.achieved:
        mid = (lo + hi) / 2
        p = at(mid)
        probes.append(p)
        if p.ok:
            lo, best = mid, p
        else:
            hi = mid
    return Capacity(lo, best, sat, first, tuple(probes))


def find_capacity(
    resolved: ResolvedSim,
    workload: Workload,
    slo: tuple[Target, ...],
    *,
    precision: float = 0.02,
    limits: Limits | None = None,
) -> Capacity:
    """One simulated engine's capacity, in virtual time."""
    lim = limits or Limits(max_waiting=max(1000, 4 * len(workload)))

    def alone() -> Probe:
        eng = VirtualEngine.from_resolved(resolved, limits=lim)
        return measure(eng.run(workload.spaced(ALONE, ALONE_GAP_S)), slo, 0.0)

    def at(rate: float) -> Probe:
        return measure(run(resolved, workload, rate, lim), slo, rate)

    tp = resolved.settings.tensor_parallel_size
    return search(alone, at, slo, where=f"{resolved.gpu.name} (TP {tp})", precision=precision)


__all__ = ["ALONE", "Capacity", "Probe", "find_capacity", "measure", "search"]
