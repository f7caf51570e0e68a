"""Per-engine circuit breaker: a pure state machine over plain data.

    CLOSED --(N consecutive failures, or failure rate >= R over the last W with >= M
              calls)--> OPEN --(cool-down elapsed)--> HALF_OPEN --(probe succeeds)--> CLOSED
                                                          \\--(probe fails)--> OPEN

In HALF_OPEN at most ``half_open_max`` probe requests are in flight at once.
Transitions take ``now`` as an argument (no clock inside) so tests are table-driven.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class Breaker(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 5  # consecutive failures
    failure_rate: float = 0.5  # over the window
    window: int = 20
    min_calls: int = 10
    cooldown_s: float = 30.0
    half_open_max: int = 1


@dataclass(frozen=True, slots=True)
class BreakerState:
    state: Breaker = Breaker.CLOSED
    consecutive: int = 0
    recent: tuple[bool, ...] = ()  # last `window` outcomes, True = failure
    opened_at: float = 0.0
    probes: int = 0  # half-open probes in flight


def allow(s: BreakerState, cfg: BreakerConfig, now: float) -> tuple[bool, BreakerState]:
    """May a request go to this engine now? (Claims a probe slot when half-open.)"""
    if s.state is Breaker.CLOSED:
        return True, s
    if s.state is Breaker.OPEN:
        if now - s.opened_at < cfg.cooldown_s:
            return False, s
        s = replace(s, state=Breaker.HALF_OPEN, probes=0)
    if s.probes >= cfg.half_open_max:
        return False, s
    return True, replace(s, probes=s.probes + 1)


def available(s: BreakerState, cfg: BreakerConfig, now: float) -> bool:
    """Like ``allow`` without claiming anything (for routing candidate lists)."""
    return allow(s, cfg, now)[0]


def record(s: BreakerState, cfg: BreakerConfig, failed: bool, now: float) -> BreakerState:
    """Apply one outcome."""
    if s.state is Breaker.HALF_OPEN:
        if failed:
            return BreakerState(Breaker.OPEN, opened_at=now)
        return BreakerState()
    if s.state is Breaker.OPEN:
        return s  # late results of requests sent before it opened
    recent = (*s.recent, failed)[-cfg.window :]
    consecutive = s.consecutive + 1 if failed else 0
    rate_trip = len(recent) >= cfg.min_calls and sum(recent) / len(recent) >= cfg.failure_rate
    if failed and (consecutive >= cfg.failure_threshold or rate_trip):
        return BreakerState(Breaker.OPEN, opened_at=now)
    return replace(s, consecutive=consecutive, recent=recent)


def release_probe(s: BreakerState) -> BreakerState:
    """A half-open probe ended without a verdict (e.g. the client went away)."""
    if s.state is Breaker.HALF_OPEN and s.probes:
        return replace(s, probes=s.probes - 1)
    return s
