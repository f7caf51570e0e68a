"""A model's shape from its ``config.json``: parameters, layers, KV heads, head size,
dtype, quantization and maximum positions.

The parsing is the simulator's (``gantry.sim.profiles.model_from_config``) and so are the
built-in profiles, so the supervisor, the planner and the simulator agree on every
figure. ``load_model`` accepts a built-in name (``llama-3.1-8b``), its Hugging Face id
(``meta-llama/Llama-3.1-8B-Instruct``), a local checkout, a ``config.json``, or a hub id
already in the local Hugging Face cache; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gantry.errors import ConfigError
from gantry.sim.profiles import MODELS, ModelProfile, model_from_config


@dataclass(frozen=True, slots=True)
class ModelInfo:
    profile: ModelProfile
    requested: str  # as the user gave it: the default served model name
    vllm_model: str  # what ``vllm serve`` is given: a hub id or a local directory
    source: str  # "built-in profile" or the config.json read

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def params(self) -> float:
        return self.profile.params

    @property
    def num_layers(self) -> int:
        return self.profile.num_layers

    @property
    def num_heads(self) -> int:
        return self.profile.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.profile.num_kv_heads

    @property
    def head_dim(self) -> int:
        return self.profile.head_dim

    @property
    def dtype(self) -> str:
        return self.profile.dtype

    @property
    def quantization(self) -> str | None:
        return self.profile.quantization

    @property
    def max_positions(self) -> int:
        return self.profile.max_model_len

    def weight_bytes(self, dtype: str) -> float:
        """Bytes of weights when served in ``dtype`` (quantized checkpoints keep theirs)."""
        if self.quantization:
            return self.profile.weight_bytes
        return self.params * (4.0 if dtype == "float32" else 2.0)

    def kv_bytes_per_token(self, tp: int = 1, kv_dtype_bytes: float = 2.0) -> float:
        """KV cache per token on one GPU; KV heads are split over TP ranks, replicated
        when there are fewer heads than ranks (vLLM's rule)."""
        heads = max(1, self.num_kv_heads // tp)
        return 2 * self.num_layers * heads * self.head_dim * kv_dtype_bytes


def load_model(spec: str, *, hf_cache: Path | None = None) -> ModelInfo:
    """Resolve ``spec``; ``ConfigError`` (one line) when there is nothing to read."""
    key = spec.lower().rstrip("/")
    for prof in MODELS.values():
        if key in (prof.name, prof.hf_id.lower()):
            return ModelInfo(prof, spec, prof.hf_id, "built-in profile")
    path = Path(spec).expanduser()
    config = path / "config.json" if path.is_dir() else path
    if config.name.endswith(".json") and config.is_file():
        return _from_file(config, spec, str(config.parent if config != path else path))
    if hf_cache is not None and spec.count("/") == 1 and not path.exists():
        snap = _cached(hf_cache, spec)
        if snap is not None:
            return _from_file(snap / "config.json", spec, spec)
    raise ConfigError(
        f"unknown model {spec!r}: not a built-in profile ({', '.join(MODELS)}), nor a local "
        "checkout or config.json" + (", nor in the Hugging Face cache" if hf_cache else "")
    )


def _from_file(config: Path, spec: str, vllm_model: str) -> ModelInfo:
    try:
        prof = model_from_config(config, name=Path(vllm_model).name or spec)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return ModelInfo(prof, spec, vllm_model, str(config))


def _cached(cache: Path, repo_id: str) -> Path | None:
    snaps = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    found = sorted(snaps.glob("*/config.json")) if snaps.is_dir() else []
    return found[-1].parent if found else None


__all__ = ["ModelInfo", "load_model"]
