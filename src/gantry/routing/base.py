"""What every policy shares: the per-request routing input, the policy type, load.

A policy is any callable ``(RouteRequest, candidates, inflight) -> EngineView``. The
candidates are the healthy engines for the request's model, from one immutable
snapshot; ``inflight`` is the gateway's own live count per engine. A policy that learns
from its decisions (prefix indexes, sticky sessions) also has
``chosen(req, engine_name)``, which the caller runs right after choosing
(``record_choice``); a decision is then a pure function of the request, the candidates
and that state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gantry.routing.snapshot import EngineView


@dataclass(slots=True)
class RouteRequest:  # built per request: not frozen (frozen dataclasses build ~2x slower)
    model: str
    session: str | None = None
    prompt_key: bytes | None = None  # not read by the built-in policies
    prefix_chain: Sequence[int] | None = None  # text_chain of the prompt (approximate)
    kv_chain: Sequence[int] | None = None  # vLLM block hashes of the prompt tokens (precise)
    prompt_tokens: int | None = None  # the prompt's length in tokens, when it was tokenized
    key: str | None = None  # the API key's id, for per-key policies
    tenant: str | None = None


Policy = Callable[[RouteRequest, Sequence[EngineView], Mapping[str, int]], EngineView]


def record_choice(policy: Policy, req: RouteRequest, engine: str) -> None:
    """Tell ``policy`` which engine serves ``req``, if it records its decisions."""
    chosen = getattr(policy, "chosen", None)
    if chosen is not None:
        chosen(req, engine)


def record_started(policy: Policy, req: RouteRequest, engine: str) -> None:
    """Tell ``policy`` that ``req``'s attempt on ``engine`` is past its prefill (its first
    token came, or the attempt ended), if it tracks prefill work."""
    started = getattr(policy, "started", None)
    if started is not None:
        started(req, engine)


def load_of(e: EngineView, inflight: Mapping[str, int]) -> float:
    """Gateway in-flight plus the engine's own queue (running + waiting)."""
    return inflight.get(e.name, 0) + e.running + e.waiting


def load_key(e: EngineView, inflight: Mapping[str, int]) -> tuple[float, int, str]:
    """Order by load; ties break on in-flight only, then on name (deterministic)."""
    return (load_of(e, inflight), inflight.get(e.name, 0), e.name)


def least_loaded(
    req: RouteRequest, candidates: Sequence[EngineView], inflight: Mapping[str, int]
) -> EngineView:
    return min(candidates, key=lambda e: load_key(e, inflight))


def load_cap(candidates: Sequence[EngineView], inflight: Mapping[str, int], factor: float) -> float:
    """Bounded load: ``factor`` x the average counting this request, plus one."""
    total = sum(load_of(e, inflight) for e in candidates)
    return factor * (total + 1) / len(candidates) + 1
