"""LoRA in the simulator's pure parts: flags, registry, batch limit, slots, cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gantry.sim.kvcache import KVCache
from gantry.sim.latency import LatencyModel, StepShape
from gantry.sim.lora import (
    LoraConfigError,
    LoraModule,
    LoraRegistry,
    LoraSettings,
    LoraSlots,
    fits,
    parse_modules,
    runtime_updating,
)
from gantry.sim.profiles import gpu_profile, model_profile
from gantry.sim.scheduler import Scheduler, SchedulerConfig
from gantry.sim.sequence import SamplingSpec, SimRequest
from gantry.sim.settings import SimConfigError, SimSettings
from gantry.sim.tokenizer import BuiltinTokenizer
from gantry.sim.validate import VLLMError

TOK = BuiltinTokenizer()
ON = LoraSettings(enabled=True, max_loras=2)


def test_lora_modules_both_forms_as_vllms_parser():
    """vllm/entrypoints/openai/cli_args.py LoRAParserAction: name=path or JSON."""
    got = parse_modules(["a=org/a", '{"name": "b", "path": "/p/b", "base_model_name": "m"}'])
    assert got == (LoraModule("a", "org/a"), LoraModule("b", "/p/b", "m"))
    with pytest.raises(LoraConfigError, match="Invalid format"):
        parse_modules(["just-a-name"])
    with pytest.raises(LoraConfigError, match="Invalid JSON"):
        parse_modules(['{"name": "x"}'])


def test_runtime_updating_reads_vllms_variable():
    assert runtime_updating({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"})
    assert runtime_updating({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"})
    assert not runtime_updating({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "0"})
    assert not runtime_updating({})


def test_registry_answers_as_serving_models(tmp_path: Path):
    """serving_models.py load_lora_adapter / unload_lora_adapter checks and texts."""
    reg = LoraRegistry(ON, ["base", "alias"])
    assert reg.load("a", "org/a") == "Success: LoRA adapter 'a' added successfully."
    assert reg.get("a") is not None and reg.get("a").parent == "base"  # type: ignore[union-attr]
    with pytest.raises(VLLMError, match="has already been loaded") as e:
        reg.load("a", "org/a")
    assert (e.value.status, e.value.type) == (400, "InvalidUserInput")
    reg.load("a", "org/a2", load_inplace=True)
    with pytest.raises(VLLMError, match="Both 'lora_name' and 'lora_path'"):
        reg.load("", "x")
    with pytest.raises(VLLMError, match="No adapter found for /nope") as e:
        reg.load("b", "/nope")
    assert e.value.status == 404
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 64}))
    with pytest.raises(VLLMError, match="LoRA rank 64 is greater than max_lora_rank 16"):
        reg.load("big", str(tmp_path))
    assert reg.unload("a") == "Success: LoRA adapter 'a' removed successfully."
    with pytest.raises(VLLMError, match="cannot be found") as e:
        reg.unload("a")
    assert (e.value.status, e.value.type) == (404, "NotFoundError")
    with pytest.raises(VLLMError, match="either 'lora_name' and 'lora_int_id'"):
        reg.unload(None)
    with pytest.raises(VLLMError, match="LoRA is not enabled"):
        LoraRegistry(LoraSettings(), ["base"]).load("a", "org/a")


@pytest.mark.parametrize(
    ("batch", "lora", "ok"),
    [
        (set(), None, True),
        ({"a", "b"}, None, True),
        ({"a"}, "b", True),
        ({"a", "b"}, "a", True),
        ({"a", "b"}, "c", False),
    ],
)
def test_fits(batch: set[str], lora: str | None, ok: bool):
    assert fits(batch, lora, 2) is ok


def _req(rid: str, lora: str | None) -> SimRequest:
    spec = SamplingSpec(max_tokens=8, ignore_eos=True)
    return SimRequest(rid, list(range(300, 310)), spec, TOK, 0.0, lora=lora)


def test_scheduler_keeps_at_most_max_loras_in_a_batch_and_skips_in_order():
    """v1/core/sched/scheduler.py: a waiting request whose adapter would exceed
    max_loras is skipped, and later requests still get their turn."""
    s = Scheduler(SchedulerConfig(max_num_seqs=8, max_loras=2), KVCache(100, 16))
    rs = [_req("1", "a"), _req("2", "b"), _req("3", "c"), _req("4", None), _req("5", "a")]
    for r in rs:
        s.add(r)
    step = s.schedule()
    assert [r.request_id for r, _ in step.items] == ["1", "2", "4", "5"]
    assert [r.request_id for r in s.waiting] == ["3"]
    assert step.shape().num_loras == 2 and step.shape().lora_tokens == 30
    while s.running:
        s.complete(s.schedule())
    assert [r.request_id for r, _ in s.schedule().items] == ["3"]


def test_slots_copy_in_only_what_is_not_resident():
    slots = LoraSlots(2)
    assert slots.use(["a", "b"]) == 2
    assert slots.use(["a"]) == 0
    assert slots.use(["c"]) == 1  # b, least recently used, goes
    assert slots.use(["a", "c"]) == 0
    assert slots.use(["b"]) == 1


def test_adapters_cost_step_time_and_kv_memory():
    gpu, model = gpu_profile("L4"), model_profile("qwen2.5-1.5b-instruct")
    base = LatencyModel(gpu, model)
    lora = LatencyModel(gpu, model, lora_rank=16)
    decode = StepShape(32, 32 * 512.0, 32 * 512, 32)
    with_one = StepShape(32, 32 * 512.0, 32 * 512, 32, lora_tokens=32, num_loras=1)
    with_four = StepShape(32, 32 * 512.0, 32 * 512, 32, lora_tokens=32, num_loras=4)
    copied = StepShape(32, 32 * 512.0, 32 * 512, 32, 32, 1, loras_loaded=1)
    assert lora.step_time(decode) == base.step_time(decode)  # no adapter in the step
    t0, t1, t4 = base.step_time(decode), lora.step_time(with_one), lora.step_time(with_four)
    assert t0 < t1 < t4 < 1.5 * t0
    assert lora.step_time(copied) > t1
    plain = SimSettings(gpu="L4").resolve().num_gpu_blocks
    slots = SimSettings(gpu="L4", lora=LoraSettings(enabled=True, max_loras=8, max_lora_rank=64))
    assert slots.resolve().num_gpu_blocks < plain


def test_settings_refuse_what_vllm_refuses():
    with pytest.raises(SimConfigError, match="max_lora_rank"):
        SimSettings(lora=LoraSettings(enabled=True, max_lora_rank=12)).resolve()
    with pytest.raises(SimConfigError, match="needs --enable-lora"):
        SimSettings(lora=LoraSettings(modules=(LoraModule("a", "b"),))).resolve()


def test_vllm_command_line_flags():
    from gantry.sim.vllm_cli import parse

    args = ["serve", "m", "--enable-lora", "--max-loras", "4", "--max-lora-rank", "64"]
    got = parse([*args, "--lora-modules", "a=x/a", '{"name": "b", "path": "x/b"}']).settings.lora
    assert (got.enabled, got.max_loras, got.max_lora_rank) == (True, 4, 64)
    assert [m.name for m in got.modules] == ["a", "b"]
    with pytest.raises(SimConfigError, match="--lora-modules"):
        parse(["serve", "m", "--lora-modules", "bad"])
