from __future__ import annotations

import itertools
import math

import pytest

from gantry.bench import (
    DatasetError,
    RequestResult,
    Schedule,
    SLOError,
    jsonl_jobs,
    multi_turn_jobs,
    parse_slo,
    percentile,
    random_jobs,
    send_times,
    shared_prefix_jobs,
    sharegpt_jobs,
    summarize,
)
from gantry.bench.arrivals import parse_steps
from gantry.bench.compare import slo_verdicts
from gantry.bench.stats import is_good


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ttft=500ms,tpot=50ms", {"ttft": 500.0, "tpot": 50.0}),
        ("e2el=2s", {"e2el": 2000.0}),
        ("itl:20", {"itl": 20.0}),
        ("", {}),
    ],
)
def test_parse_slo(spec, expected):
    assert parse_slo(spec) == expected


@pytest.mark.parametrize("spec", ["ttft", "latency=5ms", "ttft=fast", "ttft=-1ms", "tpot=5min"])
def test_parse_slo_rejects(spec):
    with pytest.raises(SLOError):
        parse_slo(spec)


def test_percentile_matches_numpy_linear():
    vals = [1.0, 2.0, 3.0, 4.0]
    assert percentile(vals, 50) == 2.5 and percentile(vals, 99) == pytest.approx(3.97)
    assert percentile([], 99) == 0.0


def test_poisson_arrivals_are_seeded_and_hit_the_rate():
    times = list(send_times(Schedule(rate=100, seed=1), 5000))
    assert times == list(send_times(Schedule(rate=100, seed=1), 5000))
    assert 45 < times[-1] < 55  # 5000 requests at 100/s
    bursty = list(send_times(Schedule(rate=100, burstiness=0.2, seed=1), 5000))
    gaps = [b - a for a, b in itertools.pairwise(bursty)]
    assert max(gaps) > 0.1  # gamma shape < 1 clusters arrivals
    assert list(send_times(Schedule(), 3)) == [0.0, 0.0, 0.0]


def test_ramp_steps_and_duration():
    ramp = list(send_times(Schedule(ramp=(1, 100), seed=0), 2000, duration=30))
    first = sum(1 for t in ramp if t < 5)
    last = sum(1 for t in ramp if t > 25)
    assert last > 5 * first
    steps = parse_steps("2s:10,2s:100")
    stepped = list(send_times(Schedule(steps=steps, seed=0), 10_000))
    assert stepped[-1] < 4.0 and 150 < len(stepped) < 300
    assert all(t <= 3 for t in send_times(Schedule(rate=50), 1000, duration=3))
    with pytest.raises(ValueError):
        parse_steps("10s")


def test_datasets_are_reproducible():
    a = random_jobs(20, 100, 10, range_ratio=0.5, seed=3)
    assert a == random_jobs(20, 100, 10, range_ratio=0.5, seed=3)
    assert a != random_jobs(20, 100, 10, range_ratio=0.5, seed=4)
    lens = [len(j.turns[0].text.split()) for j in a]
    assert min(lens) >= 50 and max(lens) <= 150
    sp = shared_prefix_jobs(4, 5, 50, 10, 8)
    assert len(sp) == 20 and len({j.system for j in sp}) == 4
    mt = multi_turn_jobs(3, 4, 10, 5)
    assert all(len(j.turns) == 4 and j.session for j in mt)


def test_file_datasets_and_their_errors(tmp_path):
    share = tmp_path / "sg.json"
    share.write_text(
        '[{"conversations": [{"from": "human", "value": "'
        + "word " * 40
        + '"}, {"from": "gpt", "value": "'
        + "answer " * 40
        + '"}]}]'
    )
    jobs = sharegpt_jobs(share, 10)
    assert len(jobs) == 1 and jobs[0].turns[0].output_len == 70
    jl = tmp_path / "p.jsonl"
    jl.write_text(
        '{"prompt": "hi", "max_tokens": 5}\n\n{"messages": [{"role": "user", "content": "x"}]}\n'
    )
    jobs = jsonl_jobs(jl, 10)
    assert jobs[0].turns[0].output_len == 5 and jobs[1].turns[0].messages
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\nnot json\n')
    with pytest.raises(DatasetError, match="line 2"):
        jsonl_jobs(bad, 10)
    with pytest.raises(DatasetError, match="not valid JSON"):
        sharegpt_jobs(jl, 10)
    wrong = tmp_path / "obj.json"
    wrong.write_text('{"a": 1}')
    with pytest.raises(DatasetError, match="ShareGPT"):
        sharegpt_jobs(wrong, 10)
    with pytest.raises(DatasetError, match="cannot read"):
        jsonl_jobs(tmp_path / "missing.jsonl", 1)


def _res(ttft: float, e2el: float, out: int, ok: bool = True, status: int = 200):
    return RequestResult(
        start=0.0,
        ok=ok,
        status=status,
        ttft=ttft,
        e2el=e2el,
        itls=[(e2el - ttft) / max(1, out - 1)] * (out - 1),
        prompt_tokens=10,
        output_tokens=out,
        chunk_times=[0.5] * out,
    )


def test_summary_definitions_and_goodput():
    results = [_res(0.1, 1.1, 11), _res(0.3, 2.3, 11), _res(0, 0, 0, ok=False, status=503)]
    s = summarize(results, 2.0, {"ttft": 200.0})
    assert s["completed"] == 2 and s["failed"] == 1
    assert s["errors_by_status"] == {"503": 1}
    assert s["mean_ttft_ms"] == pytest.approx(200.0)
    assert s["mean_tpot_ms"] == pytest.approx(150.0)  # (1.0/10 + 2.0/10) / 2
    assert s["request_throughput"] == 1.0 and s["request_goodput"] == 0.5
    assert s["total_output_tokens"] == 22 and s["output_throughput"] == 11.0
    assert s["slo_attainment"] == pytest.approx(1 / 3)
    assert is_good(results[0], {"ttft": 100.0, "tpot": 100.0})
    assert not is_good(results[1], {"ttft": 100.0})
    assert slo_verdicts(s, {"ttft": 500.0}) == {"ttft": True}
    assert math.isclose(s["p99_e2el_ms"], 2288.0)
