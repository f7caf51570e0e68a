"""The pool snapshot routing reads: immutable, rebuilt and swapped whole."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class EngineView:
    name: str
    url: str
    models: tuple[str, ...]
    healthy: bool
    reason: str = ""
    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float | None = None
    prefix_queries: float | None = None
    prefix_hits: float | None = None
    max_model_len: int | None = None
    has_metrics: bool = False
    group: str | None = None  # the engine's group (traffic splits)
    draining: bool = False  # taken out of routing by an operator: probed and listed still
    role: str | None = None  # disaggregated serving: prefill, decode or both


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    version: int
    engines: tuple[EngineView, ...]
    by_model: Mapping[str, tuple[EngineView, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    healthy: Mapping[str, tuple[EngineView, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    @classmethod
    def build(cls, version: int, engines: tuple[EngineView, ...]) -> PoolSnapshot:
        idx: dict[str, list[EngineView]] = {}
        for e in engines:
            for m in e.models:
                idx.setdefault(m, []).append(e)
        by_model = {k: tuple(v) for k, v in idx.items()}
        healthy = {
            k: tuple(e for e in v if e.healthy and not e.draining) for k, v in by_model.items()
        }
        return cls(version, engines, MappingProxyType(by_model), MappingProxyType(healthy))

    def healthy_for(self, model: str) -> tuple[EngineView, ...]:
        """The engines that may take a new request for ``model``: healthy, not draining.
        ``by_model`` lists every engine serving it."""
        return self.healthy.get(model, ())

    def models(self) -> list[str]:
        return sorted(self.by_model)
