"""When to send each request: pure, seeded schedules (seconds from the start).

* ``rate=inf``: everything at t=0 (bounded by the concurrency cap);
* fixed rate with gamma-distributed gaps (``burstiness=1`` is Poisson; lower is
  burstier), as `vllm bench serve`;
* ``ramp``: the rate grows linearly from ``start`` to ``end`` over the run;
* ``steps``: a list of (duration_s, rate) segments.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Schedule:
    rate: float = math.inf
    burstiness: float = 1.0
    ramp: tuple[float, float] | None = None  # (start rps, end rps)
    steps: tuple[tuple[float, float], ...] = ()  # ((seconds, rps), ...)
    seed: int = 0


def _gap(rng: random.Random, rate: float, burstiness: float) -> float:
    if rate <= 0 or math.isinf(rate):
        return 0.0
    return rng.gammavariate(burstiness, 1.0 / (rate * burstiness))


def send_times(s: Schedule, count: int, duration: float | None = None) -> Iterator[float]:
    """Yield up to ``count`` send times (and stop at ``duration`` if given)."""
    rng = random.Random(s.seed)
    t = 0.0
    total = duration if duration else None
    for i in range(count):
        if s.steps:
            rate = _step_rate(s.steps, t)
            if rate is None:
                return
        elif s.ramp:
            horizon = total or (count / max(1e-9, (s.ramp[0] + s.ramp[1]) / 2))
            frac = min(1.0, t / horizon) if horizon else 1.0
            rate = s.ramp[0] + (s.ramp[1] - s.ramp[0]) * frac
        else:
            rate = s.rate
        if i:
            t += _gap(rng, rate, s.burstiness)
        if (total is not None and t > total) or (s.steps and _step_rate(s.steps, t) is None):
            return
        yield t


def _step_rate(steps: tuple[tuple[float, float], ...], t: float) -> float | None:
    edge = 0.0
    for seconds, rate in steps:
        edge += seconds
        if t < edge:
            return rate
    return None


def parse_steps(spec: str) -> tuple[tuple[float, float], ...]:
    """``"10s:5,10s:20"`` -> ((10, 5), (10, 20))."""
    out = []
    for part in spec.split(","):
        dur, sep, rate = part.partition(":")
        if not sep:
            raise ValueError(f"step {part!r} must look like SECONDS:RATE, e.g. 10s:20")
        try:
            out.append((float(dur.strip().rstrip("s")), float(rate)))
        except ValueError as exc:
            raise ValueError(f"step {part!r} must look like SECONDS:RATE, e.g. 10s:20") from exc
    return tuple(out)
