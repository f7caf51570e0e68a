"""`gantry tune`: the coordinate search (pure, over any evaluator) and the command."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from gantry.cli import app
from gantry.errors import DoesNotFit
from gantry.planner.capacity import Capacity, Probe
from gantry.planner.tune import KEYS, SPACE, tune

DERIVED = {
    "max_num_seqs": 256,
    "max_num_batched_tokens": 2048,
    "enable_chunked_prefill": True,
    "gpu_memory_utilization": 0.9,
    "enable_prefix_caching": True,
}


def cap(rate: float) -> Capacity:
    p = Probe(rate, True, rate, rate * 100, {"tpot_p90": 0.02}, False, 0.1, 1.0)
    return Capacity(rate, p, p, p)


class Surface:
    """An evaluator with a known optimum: capacity peaks at max_num_seqs=64 and a
    4096-token budget; utilization 0.95 does not fit."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def derived(self) -> dict[str, Any]:
        return dict(DERIVED)

    def evaluate(self, args: dict[str, Any]) -> tuple[Capacity, str, dict[str, Any]]:
        self.calls.append(args)
        if args["gpu_memory_utilization"] > 0.9:
            raise DoesNotFit("does not fit at 0.95")
        rate = (
            10.0
            - abs(args["max_num_seqs"].bit_length() - 7)
            - (abs(args["max_num_batched_tokens"].bit_length() - 13) * 0.5)
        )
        return cap(rate), f"vllm serve m --max-num-seqs {args['max_num_seqs']}", args


def test_coordinate_search_finds_the_optimum_and_lists_every_trial():
    ev = Surface()
    result = tune(ev)
    assert result.best is not None
    assert result.best.args["max_num_seqs"] == 64
    assert result.best.args["max_num_batched_tokens"] == 4096
    assert result.best.rate == 10.0
    # each configuration measured once; the derived one first
    keys = [tuple(c[k] for k in KEYS) for c in ev.calls]
    assert len(keys) == len(set(keys)) == len(result.trials)
    assert result.trials[0].args == DERIVED
    assert len(result.trials) == 1 + sum(len(v) - 1 for _, v in SPACE)
    unfit = [t for t in result.trials if t.args["gpu_memory_utilization"] == 0.95]
    assert unfit and unfit[0].reason == "does not fit at 0.95" and unfit[0].rate == 0
    as_json = result.as_dict()
    assert as_json["best"]["args"]["max_num_seqs"] == 64
    assert len(as_json["trials"]) == len(result.trials)


def test_max_trials_bounds_the_search():
    result = tune(Surface(), max_trials=5)
    assert len(result.trials) == 5


def test_a_change_must_gain_more_than_the_search_precision():
    class Flat(Surface):
        def evaluate(self, args: dict[str, Any]) -> tuple[Capacity, str, dict[str, Any]]:
            return cap(10.0 if args == DERIVED else 10.25), "x", args

    result = tune(Flat())
    assert result.best is not None and result.best.args == DERIVED


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


BASE = ["tune", "--model", "qwen2.5-1.5b-instruct", "--gpu", "L4", "--input-tokens", "500"]
BASE += ["--output-tokens", "64", "--requests", "60"]


def test_gantry_tune_table_best_line_plot_and_json(tmp_path):
    png = tmp_path / "tune.png"
    r = invoke(*BASE, "--slo", "tpot_p90=18ms", "--max-trials", "4", "--plot", str(png))
    assert r.exit_code == 0, r.output
    rows = [line for line in r.output.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == 4
    assert "engine    vllm serve Qwen/Qwen2.5-1.5B-Instruct" in r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = invoke(*BASE, "--slo", "tpot_p90=18ms", "--max-trials", "4", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    best = max(data["trials"], key=lambda t: t["capacity_rps"])
    assert data["best"]["capacity_rps"] == pytest.approx(best["capacity_rps"], rel=0.011)
    assert data["best"]["at_capacity_ms"]["tpot_p90"] <= 18


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--slo", "tpot_p90=1ms"], "no rate meets the SLO"),
        (["--slo", "ttft_p90=fast"], "cannot parse --slo"),
        (["--slo", "tpot_p90=50ms", "--gpu", "V100"], "unknown GPU 'V100'"),
        (["--slo", "tpot_p90=50ms", "--max-trials", "0"], "--max-trials"),
        (["--slo", "tpot_p90=50ms", "--real"], "cannot run vLLM engines"),
    ],
)
def test_gantry_tune_bad_input_is_one_line(extra, message):
    r = invoke(*BASE, "--max-trials", "2", *extra)
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("gantry: error: ")]
    assert len(errors) == 1 and message in errors[0], r.output
    assert "Traceback" not in r.output
