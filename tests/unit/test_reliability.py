from __future__ import annotations

import random

import pytest

from gantry.engines.breaker import (
    Breaker,
    BreakerConfig,
    BreakerState,
    allow,
    available,
    record,
    release_probe,
)
from gantry.gateway.retry import RetryBudget, backoff, parse_retry_after
from gantry.routing import EngineView
from gantry.routing.capacity import CapacityLimits, has_capacity, kv_pressured

CFG = BreakerConfig(
    failure_threshold=3, failure_rate=0.5, window=10, min_calls=6, cooldown_s=30, half_open_max=1
)
F, S = True, False  # outcome: failure / success


def run(outcomes: list[bool], start: BreakerState | None = None, t: float = 0.0):
    s = start or BreakerState()
    for o in outcomes:
        s = record(s, CFG, o, t)
    return s


@pytest.mark.parametrize(
    ("outcomes", "state"),
    [
        ([], Breaker.CLOSED),
        ([F, F], Breaker.CLOSED),
        ([F, F, F], Breaker.OPEN),  # consecutive threshold
        ([F, F, S, F, F], Breaker.CLOSED),  # success resets the run; rate 4/5 but < min
        ([S, F, S, F, S, F], Breaker.OPEN),  # rate 3/6 >= 0.5 with min_calls 6
        ([S, S, S, S, S, F], Breaker.CLOSED),  # rate 1/6
        ([S] * 20 + [F, F], Breaker.CLOSED),  # window forgets old successes slowly
    ],
)
def test_closed_transitions(outcomes, state):
    assert run(outcomes).state is state


def test_open_then_half_open_then_closed_or_open_again():
    s = run([F, F, F], t=100.0)
    assert s.state is Breaker.OPEN
    assert allow(s, CFG, 110.0) == (False, s)  # cooling down
    ok, s = allow(s, CFG, 131.0)  # cool-down over: one probe
    assert ok and s.state is Breaker.HALF_OPEN and s.probes == 1
    assert not allow(s, CFG, 131.5)[0]  # only half_open_max probes at once
    assert record(s, CFG, S, 132.0) == BreakerState()  # probe succeeded: closed
    reopened = record(s, CFG, F, 132.0)
    assert reopened.state is Breaker.OPEN and reopened.opened_at == 132.0
    assert release_probe(s).probes == 0
    assert record(run([F, F, F]), CFG, S, 1.0).state is Breaker.OPEN  # late result ignored
    assert available(BreakerState(), CFG, 0) and not available(run([F, F, F]), CFG, 1)


def test_retry_budget_limits_retries_to_a_share_of_requests():
    b = RetryBudget(ratio=0.2, min_per_s=0.0, cap=100, tokens=0.0)
    for _ in range(100):
        b.on_request(1.0)
    spent = sum(b.try_spend(1.0) for _ in range(100))
    assert spent == 20
    b2 = RetryBudget(ratio=0.0, min_per_s=5.0, tokens=0.0, last=1.0)
    assert sum(b2.try_spend(3.0) for _ in range(100)) == 10  # 2 s x 5/s


def test_backoff_and_retry_after():
    rng = random.Random(0)
    vals = [backoff(3, 0.1, 0.5, rng) for _ in range(200)]
    assert min(vals) >= 0 and max(vals) <= 0.5
    assert parse_retry_after("2") == 2.0 and parse_retry_after("999") == 5.0
    assert parse_retry_after("Wed, 21 Oct 2015") is None and parse_retry_after(None) is None


def view(**kw: object) -> EngineView:
    base = dict(name="e", url="u", models=("m",), healthy=True)
    base.update(kw)
    return EngineView(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("engine", "inflight", "ok"),
    [
        (view(), 0, True),
        (view(), 4, False),  # gateway in-flight cap
        (view(waiting=8), 0, False),  # engine queue full
        (view(kv_usage=0.96), 0, False),  # KV shed
        (view(kv_usage=0.90), 0, True),  # KV warn only
        (view(kv_usage=None), 0, True),  # engine without metrics
    ],
)
def test_capacity(engine, inflight, ok):
    lim = CapacityLimits(max_inflight=4, max_engine_waiting=8, kv_warn=0.85, kv_shed=0.95)
    assert has_capacity(engine, {"e": inflight}, lim) is ok


def test_kv_pressure():
    lim = CapacityLimits()
    assert kv_pressured(view(kv_usage=0.9), lim) and not kv_pressured(view(kv_usage=0.5), lim)
