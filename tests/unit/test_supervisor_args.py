"""The derivation of vLLM arguments: table-driven over the GPU table, no event loop."""

from __future__ import annotations

import pytest

from gantry.errors import ConfigError, DoesNotFit
from gantry.sim.profiles import GiB
from gantry.sim.settings import SimSettings
from gantry.supervisor import derive, explain, load_model, parse_vllm_args, table_entry
from gantry.supervisor.args import DEFAULT_UTILIZATION

# model, GPU, TP → dtype, --max-model-len, --max-num-seqs, --max-num-batched-tokens
TABLE = [
    ("qwen2.5-1.5b-instruct", "T4", 1, "float16", 32768, 256, 2048),
    ("qwen3-4b", "T4", 1, "float16", 40960, 32, 2048),
    ("llama-3.1-8b", "L4", 1, "bfloat16", 44032, 32, 2048),
    ("llama-3.1-8b", "A10G", 1, "bfloat16", 44032, 32, 2048),
    ("llama-3.1-8b", "A100-40GB", 1, "bfloat16", 131072, 128, 2048),
    ("llama-3.1-8b", "A100-80GB", 1, "bfloat16", 131072, 256, 2048),
    ("llama-3.1-8b", "H100-80GB", 1, "bfloat16", 131072, 256, 8192),
    ("llama-3.1-8b", "H200", 1, "bfloat16", 131072, 512, 8192),
    ("llama-3.1-70b", "A100-80GB", 2, "bfloat16", 30720, 16, 2048),
    ("llama-3.1-70b", "H100-80GB", 4, "bfloat16", 131072, 256, 8192),
    ("llama-3.1-70b", "H200", 2, "bfloat16", 131072, 256, 8192),
    ("mistral-7b", "L4", 1, "bfloat16", 32768, 32, 2048),
]


@pytest.mark.parametrize(("model", "gpu", "tp", "dtype", "max_len", "seqs", "batched"), TABLE)
def test_derivation_per_gpu(model, gpu, tp, dtype, max_len, seqs, batched):
    d = derive(load_model(model), table_entry(gpu), tp=tp)
    a = d.args
    assert (a.dtype, a.max_model_len, a.max_num_seqs, a.max_num_batched_tokens) == (
        dtype,
        max_len,
        seqs,
        batched,
    )
    assert a.gpu_memory_utilization == DEFAULT_UTILIZATION
    assert a.enable_prefix_caching and a.enable_chunked_prefill
    assert a.tensor_parallel_size == tp
    # weights + activations + KV for one full sequence fit the requested memory
    b = d.budget
    need = b["weights"] + b["activations"] + a.max_model_len * b["kv_per_token"]
    assert need <= b["requested"]
    assert d.kv_tokens >= a.max_model_len


@pytest.mark.parametrize(("model", "gpu", "tp", "dtype", "max_len", "seqs", "batched"), TABLE)
def test_the_simulator_accepts_what_is_derived(model, gpu, tp, dtype, max_len, seqs, batched):
    a = derive(load_model(model), table_entry(gpu), tp=tp).args
    SimSettings(
        model=model,
        gpu=gpu,
        tensor_parallel_size=tp,
        dtype=a.dtype,
        gpu_memory_utilization=a.gpu_memory_utilization,
        max_model_len=a.max_model_len,
        max_num_seqs=a.max_num_seqs,
        max_num_batched_tokens=a.max_num_batched_tokens,
    ).resolve()


def test_t4_has_no_bf16_so_a_bf16_checkpoint_is_served_in_fp16():
    d = derive(load_model("qwen2.5-1.5b-instruct"), table_entry("T4"))
    step = next(s for s in d.steps if s.flag == "--dtype")
    assert (step.value, step.origin) == ("float16", "derived")
    assert "SM 7.5" in step.inputs and "no bfloat16" in step.inputs
    assert d.args.argv()[:2] == ["--dtype", "float16"]


def test_explicit_bf16_on_t4_is_refused_in_vllms_words():
    with pytest.raises(ConfigError, match=r"Bfloat16 is only supported .* compute capability 7\.5"):
        derive(
            load_model("qwen2.5-1.5b-instruct"),
            table_entry("T4"),
            user=parse_vllm_args(["--dtype", "bfloat16"]),
        )


@pytest.mark.parametrize(
    ("model", "gpu", "tp", "advice"),
    [
        ("llama-3.1-70b", "A100-40GB", 1, "try 4 GPUs (--tp 4)"),
        (
            "llama-3.1-8b",
            "T4",
            1,
            "try an AWQ or GPTQ 4-bit checkpoint (~4.2 GiB per GPU) or 2 GPUs",
        ),
        ("llama-3.1-70b", "A100-80GB", 1, "try an FP8 checkpoint"),
        ("llama-3.1-70b", "L4", 1, "try 8 GPUs (--tp 8)"),
    ],
)
def test_a_model_that_does_not_fit_gets_one_line_of_advice(model, gpu, tp, advice):
    with pytest.raises(DoesNotFit) as err:
        derive(load_model(model), table_entry(gpu), tp=tp)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{model} does not fit on" in msg
    assert advice in msg


def test_fp8_is_not_advised_where_vllm_has_no_fp8_kernels():
    with pytest.raises(DoesNotFit) as err:
        derive(load_model("mistral-7b"), table_entry("T4"))
    assert "FP8" not in str(err.value) and "AWQ" in str(err.value)


def test_explicit_arguments_win():
    user = parse_vllm_args(
        [
            "--max-model-len",
            "4096",
            "--max-num-seqs=12",
            "--gpu-memory-utilization",
            "0.8",
            "--no-enable-prefix-caching",
            "--trust-remote-code",
        ]
    )
    d = derive(load_model("llama-3.1-8b"), table_entry("H100"), user=user)
    a = d.args
    assert (a.max_model_len, a.max_num_seqs, a.gpu_memory_utilization) == (4096, 12, 0.8)
    assert a.enable_prefix_caching is False
    assert d.pinned == {
        "max_model_len",
        "max_num_seqs",
        "gpu_memory_utilization",
        "enable_prefix_caching",
    }
    assert {s.flag: s.origin for s in d.steps}["--max-model-len"] == "yours"
    assert user.passthrough == ("--trust-remote-code",)
    assert "--no-enable-prefix-caching" in a.argv()


def test_an_explicit_max_model_len_that_cannot_fit_is_one_line():
    user = parse_vllm_args(["--max-model-len", "128K"])
    with pytest.raises(DoesNotFit, match=r"--max-model-len 131072 needs 16\.0 GiB .* at most \d+"):
        derive(load_model("llama-3.1-8b"), table_entry("L4"), user=user)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-model-len", "lots"], "argument --max-model-len: invalid value 'lots'"),
        (["--gpu-memory-utilization", "1.5"], "must be in (0, 1]"),
        (["--dtype", "int3"], "invalid choice 'int3'"),
        (["--max-num-seqs", "0"], "--max-num-seqs: must be at least 1"),
        (["--max-num-seqs"], "expected one argument"),
        (["--port", "9000"], "--port is an option of gantry engine"),
    ],
)
def test_bad_vllm_flags_are_one_line_errors(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_vllm_args(argv)
    assert message in str(err.value)


def test_tensor_parallel_must_divide_the_heads():
    with pytest.raises(
        ConfigError, match=r"heads \(32\) must be divisible by tensor parallel size \(3\)"
    ):
        derive(load_model("llama-3.1-8b"), table_entry("H100"), tp=3)


def test_memory_held_by_other_processes_lowers_the_utilization():
    gpu = table_entry("L4")
    free = int(20 * GiB)
    d = derive(load_model("qwen3-4b"), gpu, free_bytes=free)
    assert d.args.gpu_memory_utilization * gpu.memory_bytes <= free - 512 * 1024**2
    step = next(s for s in d.steps if s.flag == "--gpu-memory-utilization")
    assert "free" in step.inputs


def test_a_gpu_that_is_nearly_full_says_wait():
    with pytest.raises(DoesNotFit, match="--wait-gpu-memory"):
        derive(load_model("qwen3-4b"), table_entry("L4"), free_bytes=int(1 * GiB))


def test_no_chunked_prefill_makes_a_step_hold_a_whole_prompt():
    user = parse_vllm_args(["--no-enable-chunked-prefill", "--max-model-len", "8192"])
    d = derive(load_model("llama-3.1-8b"), table_entry("H100"), user=user)
    assert d.args.max_num_batched_tokens >= 8192


def test_explain_names_every_number_its_inputs_and_formula():
    d = derive(load_model("llama-3.1-8b"), table_entry("L4"))
    text = explain(d)
    for flag in (
        "--dtype bfloat16",
        "--gpu-memory-utilization 0.90",
        "--max-model-len 44032",
        "--max-num-seqs 32",
        "--max-num-batched-tokens 2048",
        "--enable-prefix-caching on",
        "--enable-chunked-prefill on",
    ):
        assert flag in text
    assert text.count("inputs:") == text.count("formula:") == len(d.steps)
    assert "8.03B parameters, 32 layers, 8 KV heads x 128" in text
    assert "SM 8.9" in text
