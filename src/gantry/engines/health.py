"""Health from probes: a pure state machine with failure/success thresholds."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class HealthState:
    healthy: bool = False
    known: bool = False  # has any probe finished yet
    failures: int = 0  # consecutive
    successes: int = 0  # consecutive
    reason: str = "not probed yet"


def observe(
    state: HealthState,
    ok: bool,
    *,
    failure_threshold: int,
    success_threshold: int,
    reason: str = "",
) -> HealthState:
    """Next state after one probe. The first probe decides at once."""
    if ok:
        successes = state.successes + 1
        healthy = state.healthy or successes >= success_threshold or not state.known
        return HealthState(healthy, True, 0, successes, "" if healthy else "recovering")
    failures = state.failures + 1
    healthy = state.healthy and failures < failure_threshold and state.known
    return HealthState(healthy, True, failures, 0, reason or "probe failed")


def mark_down(state: HealthState, reason: str) -> HealthState:
    """A definitive failure seen on the data path (connection refused)."""
    return replace(
        state, healthy=False, known=True, failures=state.failures + 1, successes=0, reason=reason
    )
