"""Simulator settings (frozen, built once by the CLI) and engine construction."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

from gantry.sim.core import EngineConfig
from gantry.sim.faults import FaultConfig
from gantry.sim.kvcache import num_gpu_blocks
from gantry.sim.latency import LatencyModel, LatencyParams
from gantry.sim.lora import LoraConfigError, LoraSettings, check, reserve_bytes
from gantry.sim.pd import KVTransferConfig
from gantry.sim.profiles import GiB, GPUProfile, ModelProfile, gpu_profile, model_profile
from gantry.sim.scheduler import SchedulerConfig

VLLM_VERSION = "0.33.0"
BUFFER_STEPS = 10_000  # vLLM's kv_events_config.buffer_steps default
MAX_BUFFER_STEPS = 1_000_000  # replay ring: batches of up to ~1 MiB each, so a bound


class SimConfigError(ValueError):
    """A setting that cannot work (one line, shown to the user)."""


@dataclass(frozen=True, slots=True)
class SimSettings:
    model: str = "qwen2.5-1.5b-instruct"
    gpu: str = "L4"
    served_model_names: tuple[str, ...] = ()
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.92
    kv_cache_dtype: str = "auto"
    block_size: int = 16
    num_gpu_blocks_override: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0
    async_scheduling: bool = True  # vLLM's default: the next batch is chosen during a step
    speedup: float = 1.0
    instant: bool = False
    jitter: float = 0.0
    stream_s_per_token: float = 0.0  # serial front end per streamed token (LatencyParams)
    seed: int = 0
    tokenizer: str | None = None
    api_keys: tuple[str, ...] = ()
    kv_events: str | None = None
    kv_events_topic: str = ""
    enable_prompt_tokens_details: bool = True
    admin: bool = False
    faults: FaultConfig = field(default_factory=FaultConfig)
    slow_start_s: float = 0.0
    max_body_bytes: int = 64 * 1024 * 1024
    dtype: str = "auto"  # vLLM's --dtype: auto, half, float16, bfloat16, float, float32
    quantization: str | None = None  # vLLM's --quantization: awq, gptq, fp8 (and *_marlin)
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    max_logprobs: int = 20
    max_num_queued_reqs: int | None = None  # in-flight requests (waiting + running), n counted
    max_num_queued_tokens: int | None = None  # prompt tokens of requests still in prefill
    enable_server_load_tracking: bool = False
    tokens_only: bool = False  # --tokens-only / --enable-scale-out: /inference/v1/generate
    kv_events_replay: str | None = None  # ZMQ ROUTER endpoint answering replay requests
    kv_events_buffer_steps: int = BUFFER_STEPS  # batches kept for replay
    kv_transfer: KVTransferConfig | None = None  # P/D role (--kv-transfer-config, --pd-role)
    lora: LoraSettings = field(default_factory=LoraSettings)  # gantry.sim.lora

    def resolve(self) -> ResolvedSim:
        if self.kv_events_replay and not self.kv_events:
            raise SimConfigError("--kv-events-replay needs --kv-events (the stream it replays)")
        if not 1 <= self.kv_events_buffer_steps <= MAX_BUFFER_STEPS:
            raise SimConfigError(
                f"--kv-events-buffer-steps must be 1 to {MAX_BUFFER_STEPS:,}, "
                f"not {self.kv_events_buffer_steps}"
            )
        try:
            gpu = gpu_profile(self.gpu)
            model = model_profile(self.model)
        except (KeyError, ValueError) as exc:
            raise SimConfigError(str(exc).strip("'\"")) from exc
        return resolve(self, gpu, model)


@dataclass(frozen=True, slots=True)
class ResolvedSim:
    settings: SimSettings
    gpu: GPUProfile
    model: ModelProfile
    served: list[str]
    max_model_len: int
    num_gpu_blocks: int
    scheduler: SchedulerConfig
    kv_dtype_bytes: float
    fingerprint: str

    def engine_config(self, *, speedup: float | None = None) -> EngineConfig:
        """The engine core's arguments, as ``gantry sim`` runs it (``speedup`` defaults
        to the settings'; virtual time passes 1)."""
        s = self.settings
        return EngineConfig(
            model_name=self.served[0],
            max_model_len=self.max_model_len,
            num_gpu_blocks=self.num_gpu_blocks,
            block_size=s.block_size,
            scheduler=self.scheduler,
            speedup=s.speedup if speedup is None else speedup,
            prefix_caching=s.enable_prefix_caching,
        )

    def latency_model(self) -> LatencyModel:
        s = self.settings
        return LatencyModel(
            self.gpu,
            self.model,
            tp=s.tensor_parallel_size,
            kv_dtype_bytes=self.kv_dtype_bytes,
            params=LatencyParams(jitter=s.jitter, stream_s_per_token=s.stream_s_per_token),
            seed=s.seed,
            instant=s.instant,
            lora_rank=s.lora.max_lora_rank if s.lora.enabled else 0,
        )


def batch_defaults(gpu: GPUProfile) -> tuple[int, int]:
    """vLLM's serve defaults: (max_num_seqs, max_num_batched_tokens) by device memory."""
    if gpu.memory_gib >= 160:
        return 1024, 16384
    if gpu.memory_gib >= 70 and not gpu.name.startswith("A100"):
        return 1024, 8192
    return 256, 2048


def activation_reserve(model: ModelProfile, batched_tokens: int) -> float:
    """Peak activations of vLLM's profile run plus CUDA graphs and non-torch memory."""
    per_token = (4 * model.hidden_size + 3 * model.intermediate_size) * 2
    return 1.0 * GiB + batched_tokens * per_token


_DTYPES = {
    "auto": "auto",
    "half": "float16",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "float": "float32",
    "float32": "float32",
}
_QUANT = {"awq": "awq", "awq_marlin": "awq", "gptq": "gptq", "gptq_marlin": "gptq", "fp8": "fp8"}


def resolve_dtype(requested: str, model: ModelProfile, gpu: GPUProfile) -> str:
    """vLLM's dtype choice: ``auto`` keeps the checkpoint's dtype, downcasts float32 and
    falls back to float16 where the GPU has no bfloat16; an explicit bfloat16 on such a
    GPU is refused with vLLM's message."""
    dtype = _DTYPES.get(requested)
    if dtype is None:
        raise SimConfigError(f"unknown --dtype {requested!r}; choose from {', '.join(_DTYPES)}")
    if dtype == "auto":
        dtype = model.dtype if model.dtype in ("float16", "bfloat16") else "bfloat16"
        return dtype if gpu.bf16 or dtype == "float16" else "float16"
    if dtype == "bfloat16" and not gpu.bf16:
        raise SimConfigError(
            "Bfloat16 is only supported on GPUs with compute capability of at least 8.0. "
            f"Your {gpu.name} GPU has compute capability {gpu.sm}. You can use float16 "
            "instead by explicitly setting the `dtype` flag in CLI, for example: --dtype=half."
        )
    return dtype


def with_weights(s: SimSettings, model: ModelProfile, dtype: str) -> ModelProfile:
    """The model as this engine loads it: ``--quantization`` and ``--dtype`` change the
    bytes per parameter of unquantized checkpoints."""
    method = _QUANT.get(s.quantization) if s.quantization else None
    if s.quantization and method is None:
        raise SimConfigError(f"unknown --quantization {s.quantization!r}")
    if model.quantization:
        if method and method != _QUANT.get(model.quantization, model.quantization):
            raise SimConfigError(
                "Quantization method specified in the model config "
                f"({model.quantization}) does not match the quantization method specified "
                f"in the `quantization` argument ({s.quantization})."
            )
        return model
    if method in ("awq", "gptq"):
        raise SimConfigError(
            f"--quantization {s.quantization} needs a {method.upper()} checkpoint; "
            f"{model.name} is not quantized"
        )
    per_param = 1.0 if method == "fp8" else (4.0 if dtype == "float32" else 2.0)
    return dataclasses.replace(model, weight_bytes_per_param=per_param)


def resolve(s: SimSettings, gpu: GPUProfile, model: ModelProfile) -> ResolvedSim:
    dtype = resolve_dtype(s.dtype, model, gpu)
    model = with_weights(s, model, dtype)
    if s.tensor_parallel_size < 1:
        raise SimConfigError("--tensor-parallel-size must be at least 1")
    if not 0 < s.gpu_memory_utilization <= 1:
        raise SimConfigError("--gpu-memory-utilization must be in (0, 1]")
    if s.speedup <= 0:
        raise SimConfigError("--speedup must be positive")
    try:
        check(s.lora)
    except LoraConfigError as exc:
        raise SimConfigError(str(exc)) from None
    if s.enable_auto_tool_choice and not s.tool_call_parser:
        raise SimConfigError(
            "When `--enable-auto-tool-choice` is set, `--tool-call-parser` must be set as well."
        )
    kv_bytes = {
        "auto": 4.0 if dtype == "float32" else 2.0,
        "bfloat16": 2.0,
        "float16": 2.0,
        "fp8": 1.0,
        "fp8_e4m3": 1.0,
        "fp8_e5m2": 1.0,
    }.get(s.kv_cache_dtype)
    if kv_bytes is None:
        raise SimConfigError(f"unknown --kv-cache-dtype {s.kv_cache_dtype!r}")
    seqs, batched = batch_defaults(gpu)
    max_num_seqs = s.max_num_seqs or seqs
    max_len = s.max_model_len or model.max_model_len  # -1: the largest that fits (below)
    max_batched = s.max_num_batched_tokens or batched
    if not s.enable_chunked_prefill:
        max_batched = max(max_batched, max_len)
    tp = s.tensor_parallel_size
    per_token = model.kv_bytes_per_token(kv_bytes)
    if s.num_gpu_blocks_override:
        blocks = s.num_gpu_blocks_override
    else:
        blocks = num_gpu_blocks(
            gpu_memory_bytes=gpu.memory_bytes,
            utilization=s.gpu_memory_utilization,
            weight_bytes=model.weight_bytes,
            kv_bytes_per_token=per_token,
            block_size=s.block_size,
            activation_reserve_bytes=activation_reserve(model, max_batched)
            + reserve_bytes(s.lora, model, tp),
            tp=tp,
        )
    if blocks < 2:
        raise SimConfigError(
            f"No available memory for the cache blocks: {model.name} "
            f"({model.weight_bytes / GiB / tp:.1f} GiB of weights per GPU) does not fit on "
            f"{gpu.name} at gpu_memory_utilization={s.gpu_memory_utilization}"
        )
    capacity = (blocks - 1) * s.block_size
    if max_len == -1:
        max_len = min(model.max_model_len, capacity)
    if capacity < max_len:
        raise SimConfigError(
            f"To serve at least one request with the model's max seq len ({max_len}), "
            f"{max_len * per_token / tp / GiB:.2f} GiB KV cache is needed, which is larger "
            f"than the available KV cache memory ({capacity * per_token / tp / GiB:.2f} GiB). "
            f"Based on the available memory, the estimated maximum model length is {capacity}. "
            "Try increasing gpu_memory_utilization or decreasing max_model_len."
        )
    served = list(s.served_model_names) or [model.hf_id]
    sched = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=min(max_batched, max_num_seqs * max_len),
        max_model_len=max_len,
        chunked_prefill=s.enable_chunked_prefill,
        long_prefill_token_threshold=s.long_prefill_token_threshold,
        max_loras=s.lora.max_loras if s.lora.enabled else 0,
        async_scheduling=s.async_scheduling,
    )
    tag = f"{model.name}|{gpu.name}|{tp}|{blocks}".encode()
    fp = f"vllm-{VLLM_VERSION}" + (f"-tp{tp}" if tp > 1 else "")
    fp += "-" + hashlib.sha256(tag).hexdigest()[:8]
    return ResolvedSim(s, gpu, model, served, max_len, blocks, sched, kv_bytes, fp)
