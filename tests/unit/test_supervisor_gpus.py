"""GPU table matching, recorded NVML answers, the free-memory wait, launch plans."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gantry.errors import ConfigError, GpuUnavailable, LaunchError
from gantry.sim.profiles import GiB
from gantry.supervisor import (
    GPU_TABLE,
    LaunchSpec,
    RecordedGpus,
    detect,
    device_profile,
    load_model,
    match_device,
    plan_launch,
    wait_for_free_memory,
)
from gantry.supervisor.gpus import Detection, parse_gpu_list, throttle_names
from gantry.supervisor.recorded import recording

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gpus"
EXPECTED = {
    "t4x2.json": ("T4", (7, 5), False),
    "l4x2.json": ("L4", (8, 9), True),
    "a10gx2.json": ("A10G", (8, 6), True),
    "a100-40gbx2.json": ("A100-40GB", (8, 0), True),
    "a100-80gbx2.json": ("A100-80GB", (8, 0), True),
    "h100-80gbx2.json": ("H100-80GB", (9, 0), True),
    "h200x2.json": ("H200", (9, 0), True),
}


def recorded(name: str) -> Detection:
    src = RecordedGpus.from_file(FIXTURES / name)
    return detect(lambda: src)


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_recorded_gpus_match_the_table(fixture):
    table, cc, bf16 = EXPECTED[fixture]
    det = recorded(fixture)
    assert det.found and det.reason is None and det.driver == "550.54.15"
    for d in det.devices:
        assert match_device(d) is GPU_TABLE[table]
        p = device_profile(d)
        assert (p.name, p.compute_capability, p.bf16) == (table, cc, bf16)
        assert p.memory_bytes == d.memory_total  # what NVML reports, not the spec sheet
    assert det.links[0].a == 0 and det.links[0].b == 1


def test_a100_80gb_is_told_apart_by_memory_when_its_name_hides_it():
    det = recorded("a100-40gbx2.json")
    dev = det.devices[0]
    big = type(dev)(0, "NVIDIA A100-SXM4", 80 * GiB, (8, 0))
    assert match_device(dev).name == "A100-40GB"
    assert match_device(big).name == "A100-80GB"


def test_a_gpu_outside_the_table_keeps_nvmls_memory_and_capability():
    det = recorded("rtx6000ada.json")
    assert match_device(det.devices[0]) is None
    p = device_profile(det.devices[0])
    assert p.compute_capability == (8, 9) and p.bf16 and p.fp8
    assert p.peak_flops == 0


def test_no_nvml_is_a_reason_not_an_error():
    def missing():
        raise GpuUnavailable("NVML is not installed")

    det = detect(missing)
    assert not det.found and det.reason == "NVML is not installed"


def test_the_real_nvml_here_reports_why_it_cannot_be_used():
    det = detect()  # no driver on this machine; with one, it lists the GPUs
    if not det.found:
        assert det.reason and "\n" not in det.reason
    elif det.source is not None:
        det.source.close()


def test_a_recording_replays_itself(tmp_path):
    det = recorded("h100-80gbx2.json")
    assert det.source is not None
    samples = {d.index: det.source.sample(d.index) for d in det.devices}
    path = tmp_path / "box.json"
    path.write_text(json.dumps(recording(det, samples)))
    again = recorded_from(path)
    assert again.devices == det.devices and again.links == det.links


def recorded_from(path: Path) -> Detection:
    src = RecordedGpus.from_file(path)
    return detect(lambda: src)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not JSON"),
        ("[]", "expected a JSON object"),
        ('{"gpus": [{"name": "x"}]}', "missing 'compute_capability'"),
    ],
)
def test_bad_recordings_are_one_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        RecordedGpus.from_file(path)


def test_throttle_reasons_are_named_from_nvmls_bits():
    assert throttle_names(0x1 | 0x4 | 0x40) == ("gpu_idle", "sw_power_cap", "hw_thermal_slowdown")
    assert throttle_names(0) == ()


@pytest.mark.parametrize("text", ["0,x", "-1", "0,0", ""])
def test_bad_gpu_lists(text):
    with pytest.raises(ConfigError):
        parse_gpu_list(text)


async def test_wait_for_free_memory_polls_until_enough_is_free():
    src = RecordedGpus.from_file(FIXTURES / "l4-busy.json")
    naps = []

    async def nap(s):
        naps.append(s)

    samples = await wait_for_free_memory(src, [0], 20 * GiB, timeout_s=60, interval_s=2, sleep=nap)
    assert samples[0].memory_used < 1 * GiB
    assert naps == [2, 2]


async def test_wait_for_free_memory_times_out_in_one_line():
    src = RecordedGpus.from_file(FIXTURES / "l4-busy.json")
    clock = iter(range(0, 1000, 10))
    with pytest.raises(LaunchError, match=r"GPU 0 has 3\.0 GiB free after 15 s, 20\.0 GiB needed"):
        await wait_for_free_memory(
            src, [0], 20 * GiB, timeout_s=15, clock=lambda: next(clock), sleep=asyncio.sleep
        )


# -- launch plans ---------------------------------------------------------------------
def test_four_gpus_tp2_make_two_engines_on_consecutive_ports():
    det = recorded("h100-80gbx2.json")
    det4 = Detection(
        tuple(
            type(d)(i, d.name, d.memory_total, d.compute_capability)
            for i, d in enumerate(det.devices * 2)
        ),
        reason=None,
    )
    spec = LaunchSpec(model="llama-3.1-70b", tp=2, port=9000)
    plan = plan_launch(spec, load_model(spec.model), det4, vllm="/usr/bin/vllm")
    assert not plan.simulated
    assert [(e.gpus, e.port, e.env["CUDA_VISIBLE_DEVICES"]) for e in plan.engines] == [
        ((0, 1), 9000, "0,1"),
        ((2, 3), 9001, "2,3"),
    ]
    argv = plan.engines[1].argv
    assert argv[:3] == ["vllm", "serve", "meta-llama/Llama-3.1-70B-Instruct"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--port") + 1] == "9001"
    assert plan.specs()[0].url == "http://127.0.0.1:9000"


def test_no_vllm_means_simulated_engines_with_the_same_flags():
    det = recorded("l4x2.json")
    spec = LaunchSpec(model="llama-3.1-8b")
    real = plan_launch(spec, load_model(spec.model), det, vllm="/usr/bin/vllm")
    sim = plan_launch(spec, load_model(spec.model), det, vllm=None)
    assert sim.simulated and "vLLM is not installed" in (sim.reason or "")
    r, s = real.engines[0].argv, sim.engines[0].argv
    assert s[1:4] == ["-m", "gantry.sim", "serve"]
    assert r[2:] == s[4 : 4 + len(r) - 2]  # the vLLM argv, then the profile
    assert s[-2:] == ["--gpu", "L4"]


def test_no_gpu_simulates_the_named_gpu():
    spec = LaunchSpec(model="llama-3.1-8b", gpus=(0, 1), gpu_type="H100")
    plan = plan_launch(spec, load_model(spec.model), Detection((), reason="no GPU"), vllm=None)
    assert plan.simulated and plan.reason == "no GPU"
    assert [e.argv[-1] for e in plan.engines] == ["H100-80GB", "H100-80GB"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (LaunchSpec(model="llama-3.1-8b", gpus=(0, 5)), "--gpus names GPU 5"),
        (LaunchSpec(model="llama-3.1-8b", mode="vllm"), "cannot run vLLM engines"),
        (
            LaunchSpec(model="llama-3.1-8b", vllm_args=("--tensor-parallel-size", "2")),
            "differs from --tp",
        ),
        (LaunchSpec(model="llama-3.1-8b", gpu_type="B300", mode="simulate"), "unknown GPU 'B300'"),
    ],
)
def test_impossible_launches_are_one_line(spec, message):
    det = recorded("l4x2.json")
    with pytest.raises((ConfigError, LaunchError), match=message):
        plan_launch(spec, load_model(spec.model), det, vllm=None if spec.mode == "vllm" else "v")


def test_a_flag_the_simulator_refuses_fails_before_anything_starts():
    spec = LaunchSpec(model="llama-3.1-8b", mode="simulate", vllm_args=("--swap-space", "4"))
    with pytest.raises(ConfigError, match="unrecognized arguments: --swap-space 4"):
        plan_launch(spec, load_model(spec.model), Detection(()), vllm=None)


def test_unknown_models_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="unknown model 'org/nothing'"):
        load_model("org/nothing", hf_cache=tmp_path)


def test_a_model_in_the_local_hf_cache_is_read(tmp_path):
    snap = tmp_path / "models--org--tiny" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(
        json.dumps(
            {
                "hidden_size": 1024,
                "num_attention_heads": 16,
                "num_hidden_layers": 24,
                "num_key_value_heads": 8,
                "torch_dtype": "float16",
                "max_position_embeddings": 8192,
                "quantization_config": {"quant_method": "awq", "bits": 4},
            }
        )
    )
    m = load_model("org/tiny", hf_cache=tmp_path)
    assert (m.num_layers, m.num_kv_heads, m.head_dim, m.dtype, m.max_positions) == (
        24,
        8,
        64,
        "float16",
        8192,
    )
    assert m.quantization == "awq" and m.vllm_model == "org/tiny"
