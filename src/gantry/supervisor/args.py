"""vLLM arguments derived from a model and a GPU: pure arithmetic, every step recorded.

The memory budget is vLLM's own (reference: vllm-contract.md §6)::

    requested   = GPU memory x --gpu-memory-utilization
    KV cache    = requested - weights / TP - activations(max_num_batched_tokens)
    KV tokens   = KV cache // (KV bytes per token per GPU x block) x block - one block

and the figures (activation reserve, vLLM's batch defaults per GPU tier, the dtype rule)
are the simulator's, so a simulated engine accepts exactly what is derived here. A flag
the user gave is kept as given (``UserArgs``); if it cannot work the derivation says so
in one line instead of starting an engine that would fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from gantry.errors import ConfigError, DoesNotFit
from gantry.sim.profiles import GiB, GPUProfile
from gantry.sim.settings import SimConfigError, activation_reserve, batch_defaults, resolve_dtype
from gantry.supervisor.cmdline import UserArgs
from gantry.supervisor.model import ModelInfo

DEFAULT_UTILIZATION = 0.90  # vLLM's default is 0.92 (0.9 before v0.12); 0.90 leaves room
FREE_MARGIN = 512 * 1024**2  # kept free when other processes hold memory on the GPU
TYPICAL_SEQUENCE = 1024  # tokens of a typical request (prompt + output), sizes max_num_seqs
MIN_CONTEXT = 2048  # a context shorter than this (or the model's) is not worth serving
BLOCK = 16  # vLLM's default --block-size
_KV_BYTES = {"auto": 2.0, "bfloat16": 2.0, "float16": 2.0, "fp8": 1.0}
_KV_BYTES |= {"fp8_e4m3": 1.0, "fp8_e5m2": 1.0}
_QUANT_BYTES = {"fp8": 1.0, "awq": 0.56, "awq_marlin": 0.56, "gptq": 0.56, "gptq_marlin": 0.56}


@dataclass(frozen=True, slots=True)
class Step:
    """One derived (or kept) argument: its value, where it comes from and why."""

    flag: str
    value: Any
    origin: str  # "derived", "yours" or "default"
    inputs: str
    formula: str


@dataclass(frozen=True, slots=True)
class EngineArgs:
    """The arguments gantry sets on ``vllm serve`` (besides model, host and port)."""

    dtype: str
    gpu_memory_utilization: float
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    tensor_parallel_size: int = 1
    quantization: str | None = None
    kv_cache_dtype: str = "auto"

    def argv(self) -> list[str]:
        out = [
            "--dtype",
            self.dtype,
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--gpu-memory-utilization",
            f"{self.gpu_memory_utilization:.2f}",
            "--max-model-len",
            str(self.max_model_len),
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--max-num-batched-tokens",
            str(self.max_num_batched_tokens),
            ("--" if self.enable_prefix_caching else "--no-") + "enable-prefix-caching",
            ("--" if self.enable_chunked_prefill else "--no-") + "enable-chunked-prefill",
        ]
        if self.quantization:
            out += ["--quantization", self.quantization]
        if self.kv_cache_dtype != "auto":
            out += ["--kv-cache-dtype", self.kv_cache_dtype]
        return out


@dataclass(frozen=True, slots=True)
class Derivation:
    model: ModelInfo
    gpu: GPUProfile
    args: EngineArgs
    steps: tuple[Step, ...]
    kv_tokens: int  # KV cache capacity per engine with these arguments
    pinned: frozenset[str]  # EngineArgs fields the user set: never changed on restarts
    warnings: tuple[str, ...] = ()
    budget: dict[str, float] = field(default_factory=dict)  # bytes per GPU, for --explain


def _gib(b: float) -> str:
    return f"{b / GiB:.1f} GiB"


def _pow2_floor(n: float) -> int:
    return 1 << max(0, int(n).bit_length() - 1) if n >= 1 else 1


def check_tp(model: ModelInfo, tp: int) -> None:
    if tp < 1:
        raise ConfigError("--tp must be at least 1")
    if model.num_heads % tp:
        raise ConfigError(
            f"Total number of attention heads ({model.num_heads}) must be divisible by "
            f"tensor parallel size ({tp})."
        )


def _dtype(model: ModelInfo, gpu: GPUProfile, user: UserArgs) -> Step:
    requested = user.get("dtype", "auto")
    try:
        dtype = resolve_dtype(requested, model.profile, gpu)
    except SimConfigError as exc:
        raise ConfigError(str(exc)) from None
    bf16 = "has bfloat16" if gpu.bf16 else "no bfloat16 (needs SM 8.0)"
    inputs = f"checkpoint dtype {model.dtype}; {gpu.name} is SM {gpu.sm}, {bf16}"
    if "dtype" in user:
        return Step("--dtype", dtype, "yours", inputs, "as given")
    formula = "the checkpoint's dtype; float32 is served in 16 bits; bfloat16 → float16 "
    formula += "where the GPU has no bfloat16"
    return Step("--dtype", dtype, "derived", inputs, formula)


def _weights(
    model: ModelInfo, gpu: GPUProfile, dtype: str, user: UserArgs
) -> tuple[float, Step | None]:
    quant = user.get("quantization")
    if quant == "fp8" and gpu.compute_capability < (8, 0):
        raise ConfigError(f"--quantization fp8 needs SM 8.0 or later; {gpu.name} is SM {gpu.sm}")
    if quant and not model.quantization:
        per_param = _QUANT_BYTES[quant]
        step = Step(
            "--quantization",
            quant,
            "yours",
            f"{model.params / 1e9:.2f}B parameters",
            f"weights at {per_param} bytes per parameter",
        )
        return model.params * per_param, step
    return model.weight_bytes(dtype), None


def derive(
    model: ModelInfo,
    gpu: GPUProfile,
    *,
    tp: int = 1,
    user: UserArgs | None = None,
    free_bytes: int | None = None,
) -> Derivation:
    """The arguments for one engine of ``tp`` GPUs of kind ``gpu``. ``free_bytes``: the
    least free memory over those GPUs, when known (other processes may hold some)."""
    user = user or UserArgs()
    check_tp(model, tp)
    steps: list[Step] = []
    warnings: list[str] = []
    dstep = _dtype(model, gpu, user)
    steps.append(dstep)
    dtype = dstep.value
    weights, qstep = _weights(model, gpu, dtype, user)
    if qstep:
        steps.append(qstep)
    per_gpu_weights = weights / tp
    kv_dtype = user.get("kv_cache_dtype", "auto")
    kv_bytes = 4.0 if (kv_dtype == "auto" and dtype == "float32") else _KV_BYTES[kv_dtype]
    kv_per_token = model.kv_bytes_per_token(tp, kv_bytes)

    util_step = _utilization(gpu, user, free_bytes, warnings)
    steps.append(util_step)
    util = util_step.value
    seqs_default, batched_default = batch_defaults(gpu)
    chunked = user.get("enable_chunked_prefill", True)
    batched = user.get("max_num_batched_tokens", batched_default)
    requested = gpu.memory_bytes * util
    activations = activation_reserve(model.profile, batched)
    kv_cache = requested - per_gpu_weights - activations
    kv_tokens = max(0, int(kv_cache // (kv_per_token * BLOCK)) * BLOCK - BLOCK)
    min_len = min(MIN_CONTEXT, model.max_positions, user.get("max_model_len", MIN_CONTEXT))
    if kv_tokens < min_len:
        raise DoesNotFit(_advice(model, gpu, tp, dtype, util, per_gpu_weights, activations))

    len_step = _max_model_len(model, user, kv_tokens, kv_per_token, kv_cache, util)
    max_len = len_step.value
    if not chunked and batched < max_len:  # vLLM: without chunked prefill, a step holds a prompt
        batched = max_len
        activations = activation_reserve(model.profile, batched)
        kv_cache = requested - per_gpu_weights - activations
        kv_tokens = max(0, int(kv_cache // (kv_per_token * BLOCK)) * BLOCK - BLOCK)
        if kv_tokens < max_len:
            raise DoesNotFit(
                f"without chunked prefill a step must hold a whole {max_len}-token prompt, and "
                f"its activations leave {kv_tokens} tokens of KV cache: enable chunked prefill "
                "or lower --max-model-len"
            )
    steps.append(len_step)
    steps.append(_max_num_seqs(user, kv_tokens, max_len, seqs_default, gpu))
    seqs = steps[-1].value
    steps.append(_batched_step(user, batched, batched_default, chunked, gpu, max_len))
    for key, flag in (
        ("enable_prefix_caching", "--enable-prefix-caching"),
        ("enable_chunked_prefill", "--enable-chunked-prefill"),
    ):
        on = user.get(key, True)
        origin = "yours" if key in user else "derived"
        why = "repeated prefixes (system prompts, chat history) skip prefill"
        if key == "enable_chunked_prefill":
            why = "long prompts are split so they do not stall running decodes"
        steps.append(Step(flag, on, origin, "decoder-only generative model", why))
    args = EngineArgs(
        dtype=dtype,
        gpu_memory_utilization=util,
        max_model_len=max_len,
        max_num_seqs=seqs,
        max_num_batched_tokens=batched,
        enable_prefix_caching=user.get("enable_prefix_caching", True),
        enable_chunked_prefill=chunked,
        tensor_parallel_size=tp,
        quantization=user.get("quantization"),
        kv_cache_dtype=kv_dtype,
    )
    pinned = frozenset(k for k in user.values if hasattr(args, k))
    budget = {
        "memory": float(gpu.memory_bytes),
        "requested": requested,
        "weights": per_gpu_weights,
        "activations": activations,
        "kv_cache": kv_cache,
        "kv_per_token": kv_per_token,
    }
    return Derivation(model, gpu, args, tuple(steps), kv_tokens, pinned, tuple(warnings), budget)


def _utilization(
    gpu: GPUProfile, user: UserArgs, free_bytes: int | None, warnings: list[str]
) -> Step:
    flag = "--gpu-memory-utilization"
    total = gpu.memory_bytes
    if "gpu_memory_utilization" in user:
        util = user.get("gpu_memory_utilization")
        if free_bytes is not None and util * total > free_bytes:
            warnings.append(
                f"{flag} {util:.2f} asks for {_gib(util * total)} but only {_gib(free_bytes)} "
                "is free: vLLM will refuse to start"
            )
        return Step(flag, util, "yours", f"{gpu.name}: {_gib(total)}", "as given")
    util = DEFAULT_UTILIZATION
    inputs = f"{gpu.name}: {_gib(total)}"
    formula = f"{util:.2f}: KV cache gets the most memory, with room for CUDA and the driver"
    if free_bytes is not None and util * total > free_bytes - FREE_MARGIN:
        util = int((free_bytes - FREE_MARGIN) / total * 100) / 100
        inputs += f", {_gib(free_bytes)} free (other processes hold the rest)"
        formula = "floor((free - 0.5 GiB) / total, 0.01): vLLM refuses more than is free"
        if util <= 0.05:
            raise DoesNotFit(
                f"{gpu.name} has only {_gib(free_bytes)} free: other processes hold its memory "
                "(wait for them: --wait-gpu-memory SECONDS)"
            )
    return Step(flag, util, "derived", inputs, formula)


def _max_model_len(
    model: ModelInfo, user: UserArgs, kv_tokens: int, per_token: float, kv: float, util: float
) -> Step:
    flag = "--max-model-len"
    inputs = (
        f"KV cache {_gib(kv)} per GPU at {per_token / 1024:.1f} KiB per token = {kv_tokens} "
        f"tokens; model max positions {model.max_positions}"
    )
    if "max_model_len" in user:
        want = user.get("max_model_len")
        if want > kv_tokens:
            raise DoesNotFit(
                f"--max-model-len {want} needs {_gib(want * per_token)} of KV cache per GPU, "
                f"but {_gib(kv)} is left at --gpu-memory-utilization {util:.2f}: at most "
                f"{kv_tokens} fits"
            )
        if want > model.max_positions:
            raise ConfigError(
                f"--max-model-len {want} is more than {model.name}'s max_position_embeddings "
                f"({model.max_positions})"
            )
        return Step(flag, want, "yours", inputs, "as given (it fits)")
    if kv_tokens >= model.max_positions:
        return Step(flag, model.max_positions, "derived", inputs, "the model's full context fits")
    value = kv_tokens // 1024 * 1024
    formula = f"KV tokens rounded down to a multiple of 1024 ({kv_tokens} → {value})"
    return Step(flag, value, "derived", inputs, formula)


def _max_num_seqs(user: UserArgs, kv_tokens: int, max_len: int, tier: int, gpu: GPUProfile) -> Step:
    flag = "--max-num-seqs"
    typical = min(TYPICAL_SEQUENCE, max_len)
    inputs = f"{kv_tokens} KV tokens; typical sequence {typical} tokens; vLLM's {gpu.name} "
    inputs += f"default {tier}"
    if "max_num_seqs" in user:
        return Step(flag, user.get("max_num_seqs"), "yours", inputs, "as given")
    value = min(tier, _pow2_floor(kv_tokens / typical))
    formula = "power of two <= KV tokens / typical sequence, at most vLLM's default: "
    formula += "the batch the KV cache holds without preempting"
    return Step(flag, value, "derived", inputs, formula)


def _batched_step(
    user: UserArgs, batched: int, tier: int, chunked: bool, gpu: GPUProfile, max_len: int
) -> Step:
    flag = "--max-num-batched-tokens"
    inputs = f"vLLM's default on {gpu.name} ({gpu.memory_gib:.0f} GiB): {tier}"
    if "max_num_batched_tokens" in user:
        return Step(flag, batched, "yours", inputs, "as given")
    if not chunked and batched == max_len:
        return Step(flag, batched, "derived", inputs, "= --max-model-len (no chunked prefill)")
    formula = "vLLM's per-tier default (prefill chunk per step; sizes the activation reserve)"
    return Step(flag, batched, "derived", inputs, formula)


def _advice(
    model: ModelInfo,
    gpu: GPUProfile,
    tp: int,
    dtype: str,
    util: float,
    per_gpu_weights: float,
    activations: float,
) -> str:
    """One line: what does not fit, by how much, and what would."""
    usable = gpu.memory_bytes * util - activations
    need_kv = min(MIN_CONTEXT, model.max_positions) * model.kv_bytes_per_token(tp)
    where = f"one {gpu.name}" if tp == 1 else f"{tp} x {gpu.name} (TP {tp})"
    what = f"{_gib(per_gpu_weights)} of {model.quantization or dtype} weights per GPU"
    options = []
    if not model.quantization:
        fp8 = "an FP8 checkpoint (or --quantization fp8)"
        if not gpu.fp8:
            fp8 += ", weight-only on this GPU"
        for label, per_param in (
            (fp8, 1.0),
            ("an AWQ or GPTQ 4-bit checkpoint", 0.56),
        ):
            if per_param == 1.0 and gpu.compute_capability < (8, 0):
                continue  # vLLM's FP8 kernels need Ampere or later
            need = model.params * per_param / tp
            if need + need_kv <= usable:
                options.append(f"{label} (~{_gib(need)} per GPU)")
                break
    for n in (2, 4, 8):
        if n > tp and model.num_heads % n == 0:
            need = per_gpu_weights * tp / n + min(MIN_CONTEXT, model.max_positions) * (
                model.kv_bytes_per_token(n)
            )
            if need <= usable:
                options.append(f"{n} GPUs (--tp {n})")
                break
    advice = " or ".join(options) if options else "a GPU with more memory"
    return (
        f"{model.name} does not fit on {where}: {what}, {_gib(usable)} usable at "
        f"--gpu-memory-utilization {util:.2f}; try {advice}"
    )


def explain(d: Derivation) -> str:
    """The derivation as text: inputs, the memory budget, then each argument."""
    m, g, b = d.model, d.gpu, d.budget
    tp = d.args.tensor_parallel_size
    lines = [
        f"model  {m.name} ({m.source}): {m.params / 1e9:.2f}B parameters, {m.num_layers} "
        f"layers, {m.num_kv_heads} KV heads x {m.head_dim}, {m.dtype}"
        + (f", {m.quantization}" if m.quantization else "")
        + f", max positions {m.max_positions}",
        f"gpu    {g.name}: {_gib(g.memory_bytes)}, SM {g.sm} (bf16 {'yes' if g.bf16 else 'no'}, "
        f"fp8 {'yes' if g.fp8 else 'no'}), {g.hbm_bandwidth / 1e9:.0f} GB/s, "
        f"{g.peak_flops / 1e12:.0f} TFLOP/s; tensor parallel {tp}",
        "memory per GPU",
        f"  requested    {_gib(b['requested'])} = {_gib(b['memory'])} x "
        f"{d.args.gpu_memory_utilization:.2f}",
        f"  weights    - {_gib(b['weights'])} = {m.params / 1e9:.2f}B x bytes per parameter / {tp}",
        f"  activations- {_gib(b['activations'])} = 1 GiB + max_num_batched_tokens x "
        "(4 hidden + 3 intermediate) x 2 bytes",
        f"  KV cache   = {_gib(b['kv_cache'])} = {d.kv_tokens} tokens at "
        f"{b['kv_per_token'] / 1024:.1f} KiB (2 x layers x KV heads/TP x head size x bytes)",
        "arguments",
    ]
    for s in d.steps:
        value = s.value
        if isinstance(value, bool):
            value = "on" if value else "off"
        elif isinstance(value, float):
            value = f"{value:.2f}"
        lines.append(f"  {s.flag} {value}  ({s.origin})")
        lines.append(f"      inputs:  {s.inputs}")
        lines.append(f"      formula: {s.formula}")
    lines += [f"warning: {w}" for w in d.warnings]
    return "\n".join(lines)


def with_args(d: Derivation, **changes: Any) -> Derivation:
    """The derivation with some arguments replaced (restart after an out-of-memory)."""
    return replace(d, args=replace(d.args, **changes))


__all__ = [
    "DEFAULT_UTILIZATION",
    "Derivation",
    "EngineArgs",
    "Step",
    "check_tp",
    "derive",
    "explain",
    "with_args",
]
