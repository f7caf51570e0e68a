"""`gantry tune --real`'s evaluator on the real path: engines started through the
supervisor and driven by `gantry bench` in real time. Without GPUs the supervisor runs
`gantry sim` engines (``mode="simulate"``); with GPUs the same code runs vLLM."""

from __future__ import annotations

import pytest

from gantry.errors import LaunchError
from gantry.planner import parse_slo, synthetic
from gantry.planner.real import EngineEvaluator
from gantry.planner.tune import KEYS


def test_one_configuration_measured_on_a_supervised_engine():
    work = synthetic(12, 64, 16)
    slo = parse_slo("tpot_p90=200ms")
    ev = EngineEvaluator("qwen2.5-1.5b-instruct", 1, work, slo, mode="simulate")
    derived = ev.derived()
    assert set(derived) == set(KEYS)
    cap, line, effective = ev.evaluate({**derived, "max_num_seqs": 8})
    assert "gantry.sim serve Qwen/Qwen2.5-1.5B-Instruct" in line and "--max-num-seqs 8" in line
    assert effective["max_num_seqs"] == 8
    assert cap.alone.ok and cap.rate > 0
    assert cap.at_rate is not None and cap.at_rate.values["tpot_p90"] <= 0.2
    assert cap.rate <= cap.saturated.achieved


def test_real_engines_need_gpus():
    ev = EngineEvaluator("qwen2.5-1.5b-instruct", 1, synthetic(4, 16, 4), parse_slo("tpot=1s"))
    with pytest.raises(LaunchError, match="cannot run vLLM engines"):
        ev.derived()
