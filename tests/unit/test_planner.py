"""The planner: SLO and price parsing, the capacity search, plans, `gantry plan`."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from gantry.cli import app
from gantry.errors import ConfigError, ImpossibleSlo
from gantry.planner import (
    PlanRequest,
    find_capacity,
    make_plan,
    parse_price,
    parse_slo,
    plan_engine,
    synthetic,
)
from gantry.planner.capacity import measure, run
from gantry.sim.virtual import Limits
from gantry.supervisor.gpus import table_entry
from gantry.supervisor.model import load_model

SMALL = load_model("qwen2.5-1.5b-instruct")
L4 = table_entry("L4")
WORK = synthetic(80, 500, 64)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ttft_p90=500ms,tpot_p90=50ms", [("ttft", 90, 0.5), ("tpot", 90, 0.05)]),
        ("ttft=2s", [("ttft", 90, 2.0)]),
        ("e2el_p99.9=1500", [("e2el", 99.9, 1.5)]),
        (" tpot_p50 : 20ms , ", [("tpot", 50, 0.02)]),
    ],
)
def test_parse_slo(spec, expected):
    got = [(t.metric, t.percentile, pytest.approx(t.seconds)) for t in parse_slo(spec)]
    assert got == expected


@pytest.mark.parametrize(
    "spec", ["", "ttft", "itl_p90=5ms", "ttft_p90=fast", "ttft_p100=5ms", "ttft_p90=0ms"]
)
def test_parse_slo_refuses(spec):
    with pytest.raises(ConfigError):
        parse_slo(spec)


@pytest.mark.parametrize(("spec", "dollars"), [("2.5", 2.5), ("2.5/h", 2.5), ("$3/hour", 3.0)])
def test_parse_price(spec, dollars):
    assert parse_price(spec) == dollars


@pytest.mark.parametrize("spec", ["", "free", "2.5/day", "0", "-1/h"])
def test_parse_price_refuses(spec):
    with pytest.raises(ConfigError, match="--price"):
        parse_price(spec)


def test_capacity_meets_the_slo_and_a_tighter_slo_carries_less():
    engine = plan_engine(SMALL, L4, 1)
    loose = find_capacity(engine.resolved, WORK, parse_slo("tpot_p90=60ms"))
    tight = find_capacity(engine.resolved, WORK, parse_slo("tpot_p90=17ms"))
    assert 0 < tight.rate < loose.rate <= loose.saturated.achieved
    assert loose.at_rate is not None and loose.at_rate.ok
    assert tight.at_rate is not None and tight.at_rate.values["tpot_p90"] <= 0.017
    # the bracket closed: 5% more than the capacity misses the SLO
    over = measure(run(engine.resolved, WORK, tight.rate * 1.05, Limits()), tight_slo(), 0)
    assert not over.ok


def tight_slo():
    return parse_slo("tpot_p90=17ms")


def test_impossible_slo_says_what_one_request_gets():
    engine = plan_engine(SMALL, L4, 1)
    with pytest.raises(ImpossibleSlo, match=r"even one request at a time, tpot_p90 is \d+ ms"):
        find_capacity(engine.resolved, WORK, parse_slo("tpot_p90=1ms"))


def test_plan_replicas_follow_the_load_and_tp_is_compared():
    slo = parse_slo("ttft_p90=1s,tpot_p90=40ms")
    one = make_plan(PlanRequest(SMALL, L4, 1.0, WORK, slo, price=0.8, tp=1))
    cap = one.best.capacity
    assert cap is not None and one.best.replicas == 1
    many = make_plan(PlanRequest(SMALL, L4, cap.rate * 3.5, WORK, slo, price=0.8, tp=1))
    assert many.best.replicas == 4
    assert many.cost_per_hour() == pytest.approx(4 * 0.8)
    tokens_per_hour = cap.rate * 3.5 * 3600 * (WORK.mean_input + WORK.mean_output)
    assert many.cost_per_million() == pytest.approx(3.2 / tokens_per_hour * 1e6)
    # Qwen2.5-1.5B has 12 heads: TP 8 is refused with vLLM's reason, the others compared
    every = make_plan(PlanRequest(SMALL, L4, 40.0, WORK, slo))
    assert [o.tp for o in every.options] == [1, 2, 4, 8]
    assert "divisible" in every.options[3].reason
    assert every.best.gpus == min(o.gpus for o in every.options if o.ok)


def test_plan_kv_cache_is_the_simulators():
    engine = plan_engine(load_model("llama-3.1-8b"), table_entry("H100"), 1)
    assert engine.kv_tokens == engine.kv_blocks * 16
    # the derivation's KV figure and the simulator's agree (same memory budget)
    assert abs(engine.kv_tokens - engine.derivation.kv_tokens) <= 16
    assert engine.max_concurrent(1200) == min(engine.args.max_num_seqs, engine.kv_tokens // 1200)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_gantry_plan_text_and_json():
    args = ["plan", "--model", "qwen2.5-1.5b-instruct", "--gpu", "L4", "--qps", "30"]
    args += ["--input-tokens", "500", "--output-tokens", "64", "--requests", "60"]
    args += ["--slo", "ttft_p90=1s,tpot_p90=40ms", "--price", "0.8/h", "--tp", "1"]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert "best      TP 1:" in r.output and "vllm serve Qwen/Qwen2.5-1.5B-Instruct" in r.output
    assert "per 1M tokens" in r.output
    r = invoke(*args, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    best = data["best"]
    assert best["replicas"] == math.ceil(30 / best["capacity_rps"])
    assert best["kv_cache_tokens"] == best["kv_cache_blocks"] * 16
    assert data["cost_per_hour"] == pytest.approx(best["gpus"] * 0.8)
    assert best["at_capacity_ms"]["tpot_p90"] <= 40


BASE = ["plan", "--qps", "5", "--requests", "40", "--slo", "tpot_p90=50ms"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "llama-3.1-8b", "--gpu", "B300"], "unknown GPU 'B300'"),
        (["--model", "gpt-9", "--gpu", "H100"], "unknown model 'gpt-9'"),
        (["--model", "llama-3.1-70b", "--gpu", "T4", "--tp", "1"], "does not fit on one T4"),
        (["--model", "llama-3.1-70b", "--gpu", "T4"], "does not fit on 8 x T4"),
        (["--model", "llama-3.1-8b", "--gpu", "H100", "--slo", "tpot_p90=1ms"], "no rate meets"),
        (["--model", "llama-3.1-8b", "--gpu", "H100", "--slo", "ttft<1s"], "cannot parse --slo"),
        (["--model", "llama-3.1-8b", "--gpu", "H100", "--price", "lots"], "cannot parse --price"),
        (["--model", "llama-3.1-8b", "--gpu", "H100", "--qps", "0"], "--qps must be positive"),
    ],
)
def test_gantry_plan_bad_input_is_one_line(extra, message):
    r = invoke(*BASE, *extra)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gantry: error: "), r.output
    assert message in lines[0]


def test_gantry_plan_on_a_dataset_file_repeats_it_to_the_run_length(tmp_path):
    data = tmp_path / "w.jsonl"
    data.write_text(
        '{"prompt": "hello there how are you", "max_tokens": 50}\n'
        '{"messages": [{"role": "user", "content": "tell me a story"}], "max_tokens": 80}\n'
    )
    r = invoke(
        "plan", "--model", "qwen3-4b", "--gpu", "L4", "--qps", "3", "--dataset", "jsonl",
        "--dataset-path", str(data), "--slo", "tpot_p90=50ms", "--tp", "1", "--requests", "40",
        "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    work = json.loads(r.output)["workload"]
    assert work["requests"] == 40 and work["mean_output_tokens"] == 65
    r = invoke("plan", "--model", "qwen3-4b", "--gpu", "L4", "--qps", "3", "--slo", "tpot=1s",
               "--dataset", "sharegpt")  # fmt: skip
    assert r.exit_code == 2 and "needs --dataset-path" in r.output
