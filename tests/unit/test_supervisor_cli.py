"""`gantry gpus` and `gantry engine --explain`: output and one-line errors, no engine started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gantry.cli import app
from gantry.sim.settings import SimConfigError
from gantry.sim.vllm_cli import parse

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gpus"


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_gpus_lists_recorded_gpus_and_the_arguments_it_would_choose():
    r = invoke(
        "gpus", "--gpu-info", str(FIXTURES / "t4x2.json"), "--model", "qwen2.5-1.5b-instruct"
    )
    assert r.exit_code == 0, r.output
    assert "GPU 0: Tesla T4, 15.0 GiB, SM 7.5 (bf16 no, fp8 no), table T4" in r.output
    assert "link 0-1: pcie-host-bridge" in r.output
    assert "--dtype float16" in r.output
    assert "CUDA_VISIBLE_DEVICES=1" in r.output


def test_gpus_json_is_a_recording_with_the_plan():
    r = invoke(
        "gpus",
        "--gpu-info",
        str(FIXTURES / "h100-80gbx2.json"),
        "--model",
        "llama-3.1-70b",
        "--tp",
        "2",
        "--json",
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [g["table"] for g in out["gpus"]] == ["H100-80GB", "H100-80GB"]
    assert out["links"] == [{"a": 0, "b": 1, "kind": "nvlink", "count": 18}]
    (engine,) = out["engines"]
    assert engine["gpus"] == [0, 1] and engine["args"]["tensor_parallel_size"] == 2


def test_gpus_without_nvml_says_why():
    r = invoke("gpus")
    assert r.exit_code == 0
    assert r.output.startswith("no GPU: ") or "GPU 0:" in r.output


def test_engine_explain_prints_the_derivation_and_exits():
    r = invoke(
        "engine",
        "--model",
        "llama-3.1-8b",
        "--gpu-info",
        str(FIXTURES / "l4x2.json"),
        "--explain",
        "--max-model-len",
        "8192",
    )
    assert r.exit_code == 0, r.output
    assert "--max-model-len 8192  (yours)" in r.output
    assert "--max-num-seqs 16  (derived)" in r.output or "--max-num-seqs" in r.output
    assert "engine-1: http://127.0.0.1:8001" in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--model", "llama-3.1-70b", "--gpu-type", "T4"], "does not fit on one T4"),
        (["--model", "llama-3.1-8b", "--gpu-type", "Z9"], "unknown GPU 'Z9'"),
        (
            ["--model", "llama-3.1-8b", "--gpus", "0,1,2", "--tp", "2"],
            "cannot be split into groups of tp=2",
        ),
        (["--model", "llama-3.1-8b", "--tp", "3", "--gpus", "0,1,2"], "must be divisible"),
        (["--model", "llama-3.1-8b", "--dtype", "bfloat16", "--gpu-type", "T4"], "Bfloat16"),
        (["--model", "llama-3.1-8b", "--swap-space", "4"], "unrecognized arguments: --swap-space"),
        (["--model", "llama-3.1-8b", "--gpu-info", "/nonexistent.json"], "cannot read"),
        (
            ["--model", "llama-3.1-8b", "--gpu-info", str(FIXTURES / "l4x2.json"), "--gpus", "7"],
            "--gpus names GPU 7",
        ),
    ],
)
def test_engine_bad_input_is_one_line_and_non_zero(args, message):
    r = invoke("engine", "--simulate", "--explain", *args)
    assert r.exit_code == 2
    errors = [line for line in r.output.splitlines() if line.startswith("gantry: error:")]
    assert len(errors) == 1 and message in errors[0], r.output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "llama-3.1-8b", "--swap-space", "4"], "unrecognized arguments: --swap-space 4"),
        (["serve"], "required: MODEL"),
        (["run", "x"], "the only command is 'serve'"),
        (["serve", "x", "--dtype", "int4"], "invalid choice: 'int4'"),
        (["serve", "x", "--max-model-len", "big"], "argument --max-model-len"),
    ],
)
def test_simulator_refuses_what_it_does_not_model(argv, message):
    with pytest.raises(SimConfigError, match=message):
        parse(argv)


def test_simulator_takes_vllms_argv():
    a = parse(
        [
            "serve",
            "meta-llama/Llama-3.1-8B-Instruct",
            "--port=9001",
            "--served-model-name",
            "llama",
            "8b",
            "-tp",
            "2",
            "--max-model-len",
            "4K",
            "--no-enable-prefix-caching",
            "--dtype",
            "half",
            "--trust-remote-code",
            "--kv-events-config",
            '{"enable_kv_cache_events": true, "endpoint": "tcp://*:5600", "topic": "kv"}',
            "--gpu",
            "H100",
        ]
    )
    s = a.settings
    assert a.port == 9001 and s.served_model_names == ("llama", "8b")
    assert (s.tensor_parallel_size, s.max_model_len, s.dtype) == (2, 4096, "half")
    assert s.enable_prefix_caching is False and s.gpu == "H100"
    assert (s.kv_events, s.kv_events_topic) == ("tcp://*:5600", "kv")
    assert s.resolve().max_model_len == 4096
