"""Retry policy (pure): when to retry, jittered exponential backoff, a retry budget."""

from __future__ import annotations

import random
from dataclasses import dataclass


def backoff(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max, base * 2**attempt)]."""
    return rng.uniform(0, min(max_s, base_s * (2**attempt)))


@dataclass(slots=True)
class RetryBudget:
    """Retries may add at most ``ratio`` x requests, plus ``min_per_s`` retries a second.

    A token bucket: every request deposits ``ratio`` tokens, every second adds
    ``min_per_s``; a retry spends one. Bounded at ``cap`` tokens. During an outage this
    stops retries from multiplying the load on the engines that are left.
    """

    ratio: float = 0.2
    min_per_s: float = 5.0
    cap: float = 100.0
    tokens: float = 10.0
    last: float = 0.0

    def on_request(self, now: float) -> None:
        self._refill(now)
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def try_spend(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0 - 1e-9:  # tolerate float accumulation of ratio
            self.tokens -= 1.0
            return True
        return False

    def _refill(self, now: float) -> None:
        if self.last:
            self.tokens = min(self.cap, self.tokens + (now - self.last) * self.min_per_s)
        self.last = now


def retry_allowed(
    attempts: int, max_retries: int, now: float, deadline: float, budget: RetryBudget
) -> bool:
    """May a request that has failed ``attempts`` times before its first byte try again?

    Only within ``max_retries``, before its deadline, and while the retry budget lasts
    (checked last: a refused retry does not spend a token)."""
    return attempts <= max_retries and now < deadline and budget.try_spend(now)


def parse_retry_after(value: str | None, cap_s: float = 5.0) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form), capped."""
    if not value:
        return None
    try:
        return max(0.0, min(cap_s, float(value)))
    except ValueError:
        return None
