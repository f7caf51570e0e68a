from __future__ import annotations

import pytest

from gantry.engines import HealthState, mark_down, observe, parse_metrics

KW = dict(failure_threshold=2, success_threshold=2)


@pytest.mark.parametrize(
    ("start", "probes", "healthy"),
    [
        (HealthState(), [True], True),  # first probe decides at once
        (HealthState(), [False], False),
        (HealthState(True, True), [False], True),  # one failure is tolerated
        (HealthState(True, True), [False, False], False),
        (HealthState(True, True), [False, True, False], True),  # not consecutive
        (HealthState(False, True), [True], False),  # needs 2 successes to recover
        (HealthState(False, True), [True, True], True),
    ],
)
def test_health_thresholds(start, probes, healthy):
    s = start
    for ok in probes:
        s = observe(s, ok, **KW)
    assert s.healthy is healthy


def test_mark_down_is_immediate():
    assert not mark_down(HealthState(True, True), "refused").healthy


def test_parse_current_and_old_metric_names():
    text = """# HELP vllm:num_requests_running x
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:num_requests_waiting{engine="1",model_name="m"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 100.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 40.0
"""
    load = parse_metrics(text)
    assert (load.running, load.waiting, load.kv_usage) == (3.0, 3.0, 0.5)
    assert (load.prefix_queries, load.prefix_hits) == (100.0, 40.0)
    old = parse_metrics(
        'vllm:gpu_cache_usage_perc{model_name="m"} 0.25\n'
        'vllm:gpu_prefix_cache_hits_total{model_name="m"} 7\n'
    )
    assert old.kv_usage == 0.25 and old.prefix_hits == 7
    empty = parse_metrics("garbage\nhttp_requests_total 5\n")
    assert empty.running is None and empty.kv_usage is None
