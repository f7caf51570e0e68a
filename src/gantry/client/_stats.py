"""Client statistics: counts, tokens, latency percentiles (bounded reservoirs).

Latencies are kept in fixed-size uniform reservoirs (Vitter's algorithm R), so memory
stays the same however many requests are made; percentiles are exact until the
reservoir fills and a uniform sample after.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

RESERVOIR = 2048


class Reservoir:
    __slots__ = ("_rng", "count", "size", "values")

    def __init__(self, size: int = RESERVOIR, seed: int = 0) -> None:
        self.size = size
        self.values: list[float] = []
        self.count = 0
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        if len(self.values) < self.size:
            self.values.append(value)
            return
        j = self._rng.randrange(self.count)
        if j < self.size:
            self.values[j] = value

    def percentile(self, p: float) -> float | None:
        """Nearest-rank percentile (``p`` in 0..100), or None before any value."""
        if not self.values:
            return None
        ordered = sorted(self.values)
        rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
        return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float | None
    p90: float | None
    p99: float | None
    count: int

    @classmethod
    def of(cls, r: Reservoir) -> Percentiles:
        return cls(r.percentile(50), r.percentile(90), r.percentile(99), r.count)


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    requests: int
    succeeded: int
    failed: int
    retries: int
    prompt_tokens: int
    completion_tokens: int
    ttft_s: Percentiles
    e2e_s: Percentiles
    errors: dict[str, int] = field(default_factory=dict)


class ClientStats:
    """Live counters; ``snapshot()`` reads them. Errors are keyed by error class name,
    a closed set, so that map is bounded too."""

    def __init__(self, reservoir: int = RESERVOIR) -> None:
        self.requests = self.succeeded = self.failed = self.retries = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.ttft = Reservoir(reservoir, seed=1)
        self.e2e = Reservoir(reservoir, seed=2)
        self.errors: dict[str, int] = {}

    def started(self) -> None:
        self.requests += 1

    def retried(self) -> None:
        self.retries += 1

    def first_token(self, seconds: float) -> None:
        self.ttft.add(seconds)

    def finished(self, seconds: float, prompt_tokens: int, completion_tokens: int) -> None:
        self.succeeded += 1
        self.e2e.add(seconds)
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def failed_with(self, kind: str) -> None:
        self.failed += 1
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def snapshot(self) -> StatsSnapshot:
        return StatsSnapshot(
            self.requests,
            self.succeeded,
            self.failed,
            self.retries,
            self.prompt_tokens,
            self.completion_tokens,
            Percentiles.of(self.ttft),
            Percentiles.of(self.e2e),
            dict(self.errors),
        )

    def __repr__(self) -> str:
        return (
            f"<ClientStats requests={self.requests} ok={self.succeeded} "
            f"failed={self.failed} retries={self.retries}>"
        )


__all__ = ["ClientStats", "Percentiles", "Reservoir", "StatsSnapshot"]
