"""Virtual time: the engine core on a clock that jumps from step to step."""

from __future__ import annotations

import random

import pytest

from gantry.sim.latency import StepShape
from gantry.sim.settings import SimSettings
from gantry.sim.virtual import Arrival, Limits, VirtualEngine

RESOLVED = SimSettings(model="llama-3.1-8b", gpu="H100-80GB").resolve()


def prompt(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(300, 20000) for _ in range(n)]


def poisson(rate: float, n: int, prompt_len: int, out: int, seed: int = 0) -> list[Arrival]:
    rng = random.Random(seed)
    t, arrivals = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        arrivals.append(Arrival(t, prompt(prompt_len, seed * 10_000 + i), out))
    return arrivals


def test_one_request_takes_the_latency_models_time():
    eng = VirtualEngine.from_resolved(RESOLVED)
    lat = eng.core.latency
    res = eng.run([Arrival(3.0, prompt(1000), 50)])
    (t,) = res.timings
    # one prefill step of 1000 tokens (within the 8192 budget), then 49 decode steps
    prefill = lat.step_time(StepShape(1000, 1000 * 1000 / 2, 1000, 1))
    assert t.ttft == pytest.approx(lat.request_overhead + prefill)
    decode = sum(lat.step_time(StepShape(1, float(1000 + k), 1000 + k, 1)) for k in range(1, 50))
    assert t.e2el == pytest.approx(t.ttft + decode)
    assert t.output_tokens == 50 and t.prompt_tokens == 1000
    assert t.tpot == pytest.approx(decode / 49)
    assert res.steps == 50 and not res.overloaded and res.unfinished == 0


def test_idle_time_is_skipped():
    res = VirtualEngine.from_resolved(RESOLVED).run(
        [Arrival(0.0, prompt(100), 10), Arrival(3600.0, prompt(100, 1), 10)]
    )
    assert res.completed == 2
    assert res.duration > 3600  # an hour of virtual time
    assert res.steps == 20  # and only the steps that did work
    assert res.timings[0].ttft == pytest.approx(res.timings[1].ttft, rel=0.05)


def test_latency_grows_with_load():
    low = VirtualEngine.from_resolved(RESOLVED).run(poisson(2, 150, 500, 100))
    high = VirtualEngine.from_resolved(RESOLVED).run(poisson(40, 150, 500, 100))
    assert low.completed == high.completed == 150
    assert high.percentile("tpot", 90) > 1.5 * low.percentile("tpot", 90)
    assert high.request_throughput > 5 * low.request_throughput
    assert high.peak_running > low.peak_running


def test_same_workload_same_result():
    a = VirtualEngine.from_resolved(RESOLVED).run(poisson(20, 100, 300, 50))
    b = VirtualEngine.from_resolved(RESOLVED).run(poisson(20, 100, 300, 50))
    assert a.timings == b.timings and a.steps == b.steps


def test_overload_stops_early():
    # 2,000 requests at once into an engine that queues at most 50: stopped, flagged
    lim = Limits(max_waiting=50)
    res = VirtualEngine.from_resolved(RESOLVED, limits=lim).run(
        Arrival(0.0, prompt(64, i), 500) for i in range(2000)
    )
    assert res.overloaded
    assert res.unfinished > 50


def test_arrivals_are_bounded_and_ordered():
    lim = Limits(max_requests=5)
    res = VirtualEngine.from_resolved(RESOLVED, limits=lim).run(
        Arrival(float(i), prompt(16, i), 2) for i in range(1000)
    )
    assert res.completed == 5
    with pytest.raises(ValueError, match="time order"):
        VirtualEngine.from_resolved(RESOLVED).run(
            [Arrival(2.0, prompt(16), 2), Arrival(1.0, prompt(16), 2)]
        )


def test_percentiles_and_throughput():
    res = VirtualEngine.from_resolved(RESOLVED).run(poisson(5, 50, 200, 20))
    ttfts = sorted(t.ttft for t in res.timings)
    assert res.percentile("ttft", 0) == ttfts[0]
    assert res.percentile("ttft", 100) == ttfts[-1]
    assert res.output_throughput == pytest.approx(50 * 20 / res.duration)
    with pytest.raises(ValueError):
        res.values("itl")


def test_closed_loop_keeps_at_most_n_in_flight():
    arrivals = [Arrival(0.0, prompt(200, i), 20) for i in range(12)]
    one = VirtualEngine.from_resolved(RESOLVED).run(arrivals, concurrency=1)
    assert one.completed == 12 and one.peak_running == 1
    # one at a time, back to back: the run lasts the sum of the requests' latencies
    assert one.duration == pytest.approx(sum(t.e2el for t in one.timings))
    four = VirtualEngine.from_resolved(RESOLVED).run(arrivals, concurrency=4)
    assert four.peak_running == 4
    assert four.output_throughput > 2.5 * one.output_throughput
    with pytest.raises(ValueError, match="concurrency"):
        VirtualEngine.from_resolved(RESOLVED).run(arrivals, concurrency=0)


def test_async_scheduling_adds_one_step_to_ttft_on_a_busy_engine_only():
    """A request reaching a busy engine waits for the batch already chosen; one reaching
    an idle engine does not."""

    def ttfts(on: bool, concurrency: int) -> list[float]:
        r = SimSettings(model="llama-3.1-8b", gpu="H100-80GB", async_scheduling=on).resolve()
        work = [Arrival(0.0, prompt(100, i), 64) for i in range(4 * concurrency)]
        res = VirtualEngine.from_resolved(r).run(work, concurrency=concurrency)
        return [t.ttft for t in res.timings]

    assert ttfts(True, 1) == pytest.approx(ttfts(False, 1))
    step = RESOLVED.latency_model().decode_time(4, 150)
    busy_on, busy_off = ttfts(True, 4)[4:], ttfts(False, 4)[4:]  # past the first wave
    extra = sum(busy_on) / len(busy_on) - sum(busy_off) / len(busy_off)
    assert 0.5 * step < extra < 1.5 * step
