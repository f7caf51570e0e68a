"""GPU and model profiles for the latency model.

GPU figures are public spec-sheet values (dense BF16/FP16 tensor FLOPs without
sparsity, HBM/GDDR bandwidth, memory). Model figures come from each model's
Hugging Face ``config.json``; a local file can be read with ``model_from_config``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GiB = 1024**3


@dataclass(frozen=True, slots=True)
class GPUProfile:
    name: str
    memory_bytes: int
    peak_flops: float  # dense bf16/fp16 tensor FLOP/s
    hbm_bandwidth: float  # bytes/s
    fp8: bool = False  # native FP8 tensor cores (Ada/Hopper)
    compute_capability: tuple[int, int] = (8, 0)  # CUDA SM version

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB

    @property
    def bf16(self) -> bool:
        """bfloat16 needs SM 8.0 (Ampere) or later; a T4 (SM 7.5) has only float16."""
        return self.compute_capability >= (8, 0)

    @property
    def sm(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


# Spec sheets: NVIDIA T4, L4, A10G (AWS), RTX A4000, A40, A100 (40/80 GB SXM),
# H100 SXM5 80GB, H200 SXM 141GB; compute capabilities from NVIDIA's CUDA GPU list.
GPUS: dict[str, GPUProfile] = {
    g.name: g
    for g in (
        GPUProfile("T4", 16 * GiB, 65e12, 320e9, compute_capability=(7, 5)),
        GPUProfile("L4", 24 * GiB, 121e12, 300e9, fp8=True, compute_capability=(8, 9)),
        GPUProfile("A10G", 24 * GiB, 125e12, 600e9, compute_capability=(8, 6)),
        GPUProfile("A4000", 16 * GiB, 76.7e12, 448e9, compute_capability=(8, 6)),
        GPUProfile("A40", 48 * GiB, 149.7e12, 696e9, compute_capability=(8, 6)),
        GPUProfile("A100-40GB", 40 * GiB, 312e12, 1555e9, compute_capability=(8, 0)),
        GPUProfile("A100-80GB", 80 * GiB, 312e12, 2039e9, compute_capability=(8, 0)),
        GPUProfile("H100-80GB", 80 * GiB, 989e12, 3350e9, fp8=True, compute_capability=(9, 0)),
        GPUProfile("H200", 141 * GiB, 989e12, 4800e9, fp8=True, compute_capability=(9, 0)),
    )
}

_GPU_ALIASES = {"H100": "H100-80GB", "A100": "A100-80GB", "H200-141GB": "H200"}


def gpu_profile(name: str) -> GPUProfile:
    key = _GPU_ALIASES.get(name.upper(), name.upper())
    for gname, prof in GPUS.items():
        if gname.upper() == key:
            return prof
    raise KeyError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")


@dataclass(frozen=True, slots=True)
class ModelProfile:
    name: str
    hf_id: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_model_len: int
    weight_bytes_per_param: float = 2.0  # bf16; AWQ int4 ~ 0.5 + scales
    tied_embeddings: bool = False
    num_experts: int = 0
    experts_per_token: int = 0
    dtype: str = "bfloat16"  # config.json torch_dtype: what the weights are stored in
    quantization: str | None = None  # quantization_config.quant_method (awq, gptq, fp8)

    @property
    def params(self) -> float:
        """Total parameters (embeddings included)."""
        return self._params(active=False)

    @property
    def active_params(self) -> float:
        """Parameters touched per token (one expert set for MoE, no embedding lookup)."""
        return self._params(active=True)

    def _params(self, *, active: bool) -> float:
        h, layers = self.hidden_size, self.num_layers
        attn = h * self.num_heads * self.head_dim * 2 + h * self.num_kv_heads * self.head_dim * 2
        mlp = 3 * h * self.intermediate_size
        if self.num_experts:
            mlp *= self.experts_per_token if active else self.num_experts
        emb = self.vocab_size * h
        per_layer = attn + mlp + 2 * h
        head = emb  # the LM head is a full matmul per token
        total = layers * per_layer + head + (0 if (active or self.tied_embeddings) else emb)
        return float(total)

    @property
    def weight_bytes(self) -> float:
        return self.params * self.weight_bytes_per_param

    def kv_bytes_per_token(self, kv_dtype_bytes: float = 2.0) -> float:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * kv_dtype_bytes


def _model(name: str, hf_id: str, **kw: Any) -> ModelProfile:
    return ModelProfile(name=name, hf_id=hf_id, **kw)


# From each model's config.json on Hugging Face.
MODELS: dict[str, ModelProfile] = {
    m.name: m
    for m in (
        _model(
            "qwen2.5-1.5b-instruct",
            "Qwen/Qwen2.5-1.5B-Instruct",
            num_layers=28,
            hidden_size=1536,
            num_heads=12,
            num_kv_heads=2,
            head_dim=128,
            intermediate_size=8960,
            vocab_size=151936,
            max_model_len=32768,
            tied_embeddings=True,
        ),
        _model(
            "qwen2.5-1.5b-instruct-awq",
            "Qwen/Qwen2.5-1.5B-Instruct-AWQ",
            num_layers=28,
            hidden_size=1536,
            num_heads=12,
            num_kv_heads=2,
            head_dim=128,
            intermediate_size=8960,
            vocab_size=151936,
            max_model_len=32768,
            tied_embeddings=True,
            weight_bytes_per_param=0.56,
            dtype="float16",
            quantization="awq",
        ),
        _model(
            "qwen3-4b",
            "Qwen/Qwen3-4B",
            num_layers=36,
            hidden_size=2560,
            num_heads=32,
            num_kv_heads=8,
            head_dim=128,
            intermediate_size=9728,
            vocab_size=151936,
            max_model_len=40960,
            tied_embeddings=True,
        ),
        _model(
            "mistral-7b",
            "mistralai/Mistral-7B-Instruct-v0.3",
            num_layers=32,
            hidden_size=4096,
            num_heads=32,
            num_kv_heads=8,
            head_dim=128,
            intermediate_size=14336,
            vocab_size=32768,
            max_model_len=32768,
        ),
        _model(
            "llama-3.1-8b",
            "meta-llama/Llama-3.1-8B-Instruct",
            num_layers=32,
            hidden_size=4096,
            num_heads=32,
            num_kv_heads=8,
            head_dim=128,
            intermediate_size=14336,
            vocab_size=128256,
            max_model_len=131072,
        ),
        _model(
            "llama-3.1-70b",
            "meta-llama/Llama-3.1-70B-Instruct",
            num_layers=80,
            hidden_size=8192,
            num_heads=64,
            num_kv_heads=8,
            head_dim=128,
            intermediate_size=28672,
            vocab_size=128256,
            max_model_len=131072,
        ),
    )
}


def model_profile(name: str) -> ModelProfile:
    key = name.lower().split("/")[-1]
    if key in MODELS:
        return MODELS[key]
    for prof in MODELS.values():
        if prof.hf_id.lower() == name.lower() or prof.hf_id.lower().split("/")[-1] == key:
            return prof
    path = Path(name)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" and path.is_file():
        return model_from_config(path)
    raise KeyError(
        f"unknown model {name!r}; known: {', '.join(MODELS)} (or a path to a config.json)"
    )


def model_from_config(path: str | Path, name: str | None = None) -> ModelProfile:
    """Build a profile from a Hugging Face ``config.json``."""
    p = Path(path)
    try:
        cfg = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read model config {p}: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ValueError(f"model config {p} is not a JSON object")
    cfg = cfg.get("text_config", cfg) if "num_hidden_layers" not in cfg else cfg
    try:
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        layers = int(cfg["num_hidden_layers"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"model config {p} lacks {exc}") from exc
    quant = cfg.get("quantization_config") or {}
    if not isinstance(quant, dict):
        quant = {}
    bits = quant.get("bits") or quant.get("w_bit")
    method = quant.get("quant_method")
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    wbytes = 4.0 if dtype == "float32" else 2.0
    if bits:
        wbytes = float(bits) / 8 + 0.06  # group scales and zeros
    elif method == "fp8":
        wbytes = 1.0
    return ModelProfile(
        name=name or p.parent.name or "model",
        hf_id=name or str(p.parent),
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads", heads)),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate_size=int(cfg.get("intermediate_size", 4 * hidden)),
        vocab_size=int(cfg.get("vocab_size", 32000)),
        max_model_len=int(cfg.get("max_position_embeddings", 4096)),
        weight_bytes_per_param=wbytes,
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        num_experts=int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0),
        experts_per_token=int(cfg.get("num_experts_per_tok") or 0),
        dtype=dtype,
        quantization=str(method) if method else None,
    )
