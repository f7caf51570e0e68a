"""Where to load a LoRA adapter: pure, over one snapshot's engines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gantry.routing.base import load_key
from gantry.routing.snapshot import EngineView


def place_adapter(
    base: Sequence[EngineView], inflight: Mapping[str, int], exclude: frozenset[str] = frozenset()
) -> EngineView | None:
    """The least-loaded engine of ``base`` (healthy engines serving the adapter's base
    model) not in ``exclude``; None when there is none."""
    candidates = [e for e in base if e.name not in exclude]
    return min(candidates, key=lambda e: load_key(e, inflight)) if candidates else None


__all__ = ["place_adapter"]
