"""The planner's prediction against the real thing: `gantry bench` driving a real-time
`gantry sim` subprocess at the capacity `gantry plan` predicts.

Compared at one fixed rate, the predicted capacity, on the same requests and the same
arrival times (the planner and `gantry bench` share datasets and schedules): the
achieved request throughput, the SLO's binding metric (which the plan puts at its
target) and TTFT. A knee found by searching in wall-clock time would be at the mercy
of a busy machine; these are not, since the simulator catches up lost time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gantry.netutil import free_port
from gantry.planner import PlanRequest, make_plan, parse_slo, synthetic
from gantry.planner.capacity import run
from gantry.sim.virtual import Limits
from gantry.supervisor.gpus import table_entry
from gantry.supervisor.model import load_model
from tests.helpers import gantry_cmd, run_proc

TTFT_SLACK_MS = 50.0  # HTTP, JSON and the client's own scheduling on a busy machine


def validate(
    tmp: Path, model: str, gpu: str, n: int, inp: int, out: int, slo_spec: str
) -> dict[str, tuple[float, float]]:
    """(predicted, measured) per figure at the predicted capacity."""
    work = synthetic(n, inp, out)
    slo = parse_slo(slo_spec)
    plan = make_plan(PlanRequest(load_model(model), table_entry(gpu), 1.0, work, slo, tp=1))
    best = plan.best
    assert best.engine is not None and best.capacity is not None
    rate = best.capacity.rate
    predicted = run(best.engine.resolved, work, rate, Limits())
    port = free_port()
    serve = [sys.executable, "-m", "gantry.sim", "serve", best.engine.derivation.model.vllm_model]
    serve += ["--gpu", gpu, "--port", str(port), *best.engine.args.argv()]
    result = tmp / "bench.json"
    with run_proc(serve, port, tmp):
        bench = gantry_cmd("bench", "--url", f"http://127.0.0.1:{port}/v1", "--rate", repr(rate))
        bench += ["--num-prompts", str(n), "--input-len", str(inp), "--output-len", str(out)]
        bench += ["--seed", "0", "--no-progress", "--output", str(result)]
        subprocess.run(bench, check=True, capture_output=True, timeout=600)
    measured = json.loads(result.read_text())
    assert measured["completed"] == n
    (target,) = slo
    return {
        "request_throughput": (predicted.request_throughput, measured["request_throughput"]),
        "output_throughput": (predicted.output_throughput, measured["output_throughput"]),
        target.label: (
            predicted.percentile(target.metric, target.percentile) * 1000,
            measured[f"p{target.percentile:g}_{target.metric}_ms"],
        ),
        "ttft_p90": (predicted.percentile("ttft", 90) * 1000, measured["p90_ttft_ms"]),
        "slo_target": (target.seconds * 1000, target.seconds * 1000),
    }


def check(figures: dict[str, tuple[float, float]], binding: str) -> None:
    for name in ("request_throughput", "output_throughput", binding):
        predicted, measured = figures[name]
        assert measured == pytest.approx(predicted, rel=0.10), (name, figures)
    target = figures["slo_target"][0]
    # at the predicted capacity the real-time engine sits on the SLO, within 10%
    assert figures[binding][1] == pytest.approx(target, rel=0.10), figures
    predicted, measured = figures["ttft_p90"]
    assert abs(measured - predicted) <= 0.10 * predicted + TTFT_SLACK_MS, figures


def test_plan_capacity_matches_bench_against_a_real_time_sim(tmp_path):
    figures = validate(tmp_path, "qwen3-4b", "L4", 60, 300, 32, "tpot_p90=45ms")
    check(figures, "tpot_p90")


@pytest.mark.slow
def test_plan_capacity_matches_bench_longer_run(tmp_path):
    figures = validate(tmp_path, "llama-3.1-8b", "A100-80GB", 300, 1000, 100, "tpot_p90=40ms")
    check(figures, "tpot_p90")
