from __future__ import annotations

import random

import pytest

from gantry.sim.faults import Action, FaultConfig, decide, parse_error_rates


def test_no_faults_means_no_action():
    d = decide(FaultConfig(), random.Random(0))
    assert d.action is Action.NONE and d.delay_s == 0


def test_error_rate_is_respected_statistically():
    cfg = FaultConfig(error_rate={503: 0.3})
    rng = random.Random(1)
    hits = sum(decide(cfg, rng).action is Action.ERROR for _ in range(5000))
    assert 1300 < hits < 1700


@pytest.mark.parametrize(
    ("patch", "field", "value"),
    [
        ({"hang_rate": 1}, "action", Action.HANG),
        ({"stall_rate": 1}, "action", Action.STALL),
        ({"drop_rate": 1}, "action", Action.DROP),
        ({"latency_ms": 250}, "delay_s", 0.25),
    ],
)
def test_each_fault_kind(patch, field, value):
    cfg = FaultConfig()
    cfg.update(patch)
    assert getattr(decide(cfg, random.Random(0)), field) == value


@pytest.mark.parametrize(
    "patch",
    [
        {"nope": 1},
        {"hang_rate": 2},
        {"error_rate": {404: 0.5}},
        {"latency_ms": "x"},
        {"error_rate": [1]},
    ],
)
def test_bad_patches_are_refused(patch):
    with pytest.raises(ValueError):
        FaultConfig().update(patch)


def test_parse_error_rates():
    assert parse_error_rates(["503=0.1", "429=0.2"]) == {503: 0.1, 429: 0.2}
    with pytest.raises(ValueError):
        parse_error_rates(["503"])
