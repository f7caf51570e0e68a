"""Routing settings: policies per model, the cache-aware indexes, splits, shadow."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_FROZEN = ConfigDict(frozen=True, extra="forbid")


PolicyName = Literal[
    "least_loaded",
    "round_robin",
    "session_affinity",
    "prefix",
    "kv_aware",
    "power_of_two",
    "sticky_least_loaded",
]


class PrefixRouting(BaseModel):
    """The approximate prefix index (policy ``prefix``; ``kv_aware``'s fallback)."""

    model_config = _FROZEN
    block_chars: int = Field(default=64, ge=8)  # ~16 tokens of text per block
    max_blocks_per_engine: int = Field(default=100_000, ge=1)
    cache_threshold: float = Field(default=0.5, ge=0, le=1)  # shorter matches: least loaded
    balance_abs: float = Field(default=32, ge=0)  # imbalanced when max-min load > this
    balance_rel: float = Field(default=1.5, ge=1)  # ... and max > min x this


class KVWeights(BaseModel):
    model_config = _FROZEN
    prefix: float = Field(default=1.0, ge=0)  # cached prefix blocks / prompt blocks
    queue: float = Field(default=0.0, ge=0)  # 1 - load / the busiest candidate's load
    kv: float = Field(default=0.0, ge=0)  # 1 - KV-cache usage
    prefill: float = Field(default=3.0, ge=0)  # 1 - uncached tokens queued + own, relative


class KVRouting(BaseModel):
    """Precise prefix routing from the engines' KV events (policy ``kv_aware``)."""

    model_config = _FROZEN
    block_size: int = Field(default=16, ge=1)  # must equal the engines' --block-size
    weights: KVWeights = KVWeights()
    max_blocks_per_engine: int = Field(default=1_000_000, ge=1)
    recovery_s: float = Field(default=30.0, ge=0)  # prefix scoring after lost events
    tokenizer: str | None = None  # a local tokenizer.json; else the engine's /tokenize
    tokenize_cache: int = Field(default=4096, ge=0)  # prompts whose token ids are kept


class ModelRouting(BaseModel):
    model_config = _FROZEN
    policy: PolicyName


class RoutingConfig(BaseModel):
    model_config = _FROZEN
    policy: PolicyName = "least_loaded"
    session_header: str = "x-session-id"
    affinity_load_factor: float = Field(default=1.25, ge=1.0)
    prefix: PrefixRouting = PrefixRouting()
    kv_aware: KVRouting = KVRouting()
    models: dict[str, ModelRouting] = Field(default_factory=dict)  # per-model policy

    def policy_for(self, model: str) -> str:
        m = self.models.get(model)
        return m.policy if m is not None else self.policy


class SplitTarget(BaseModel):
    model_config = _FROZEN
    model: str  # the model that serves this arm
    group: str | None = None  # only engines of this group (engines[].group)
    weight: float = Field(gt=0)

    @property
    def arm(self) -> str:
        return f"{self.model}@{self.group}" if self.group else self.model


class Split(BaseModel):
    """One public model name served by several targets (canary, A/B)."""

    model_config = _FROZEN
    targets: tuple[SplitTarget, ...] = Field(min_length=1)
    sticky: Literal["key", "tenant", "session", "none"] = "key"

    @field_validator("targets")
    @classmethod
    def _arms(cls, v: tuple[SplitTarget, ...]) -> tuple[SplitTarget, ...]:
        arms = [t.arm for t in v]
        if len(set(arms)) != len(arms):
            raise ValueError("each target (model and group) may appear once")
        return v


class Shadow(BaseModel):
    """Mirror a share of a model's requests to a candidate; its answers are discarded."""

    model_config = _FROZEN
    target: str
    share: float = Field(default=0.05, gt=0, le=1)
    max_inflight: int = Field(default=32, ge=1)  # beyond this, mirrors are skipped
