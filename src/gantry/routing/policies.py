"""Routing policies: pure choices over (request, snapshot, in-flight counts).

A policy is any callable ``(RouteRequest, candidates, inflight) -> EngineView``. The
candidates are the healthy engines for the request's model, from one immutable
snapshot; ``inflight`` is the gateway's own live count per engine. Cache-aware
policies plug in with the same signature (the request carries its prompt key).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gantry.routing.snapshot import EngineView


@dataclass(slots=True)
class RouteRequest:  # built per request: not frozen (frozen dataclasses build ~2x slower)
    model: str
    session: str | None = None
    prompt_key: bytes | None = None  # for prefix/KV-aware policies


Policy = Callable[[RouteRequest, Sequence[EngineView], Mapping[str, int]], EngineView]


def load_of(e: EngineView, inflight: Mapping[str, int]) -> float:
    """Gateway in-flight plus the engine's own queue (running + waiting)."""
    return inflight.get(e.name, 0) + e.running + e.waiting


def least_loaded(
    req: RouteRequest, candidates: Sequence[EngineView], inflight: Mapping[str, int]
) -> EngineView:
    # Ties break on in-flight only, then on name, so the choice is deterministic.
    return min(candidates, key=lambda e: (load_of(e, inflight), inflight.get(e.name, 0), e.name))


class RoundRobin:
    """The only state is a counter; the choice itself is a pure index."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def __call__(
        self, req: RouteRequest, candidates: Sequence[EngineView], inflight: Mapping[str, int]
    ) -> EngineView:
        return candidates[next(self._counter) % len(candidates)]


def _h(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class SessionAffinity:
    """Consistent hashing with bounded load (Mirrokni et al., 2018).

    A session maps to the first engine clockwise on a hash ring whose load is at most
    ``load_factor`` x the average (+1), so a hot session cannot overload one engine,
    and adding or removing an engine moves only its own share of sessions. Requests
    without a session go to the least-loaded engine.
    """

    VNODES = 64

    def __init__(self, load_factor: float = 1.25, max_rings: int = 64) -> None:
        self.load_factor = load_factor
        self._rings: dict[tuple[str, ...], tuple[list[int], list[str]]] = {}
        self._max_rings = max_rings

    def _ring(self, names: tuple[str, ...]) -> tuple[list[int], list[str]]:
        ring = self._rings.get(names)
        if ring is None:
            points = sorted((_h(f"{n}#{v}"), n) for n in names for v in range(self.VNODES))
            ring = ([p for p, _ in points], [n for _, n in points])
            if len(self._rings) >= self._max_rings:  # bounded: membership sets seen
                self._rings.pop(next(iter(self._rings)))
            self._rings[names] = ring
        return ring

    def __call__(
        self, req: RouteRequest, candidates: Sequence[EngineView], inflight: Mapping[str, int]
    ) -> EngineView:
        if not req.session or len(candidates) == 1:
            return least_loaded(req, candidates, inflight)
        by_name = {e.name: e for e in candidates}
        keys, owners = self._ring(tuple(sorted(by_name)))
        total = sum(load_of(e, inflight) for e in candidates)
        cap = self.load_factor * (total + 1) / len(candidates) + 1
        start = bisect.bisect(keys, _h(req.session)) % len(keys)
        tried: set[str] = set()
        for i in range(len(keys)):
            name = owners[(start + i) % len(keys)]
            if name in tried:
                continue
            tried.add(name)
            e = by_name[name]
            if load_of(e, inflight) < cap:
                return e
            if len(tried) == len(by_name):
                break
        return least_loaded(req, candidates, inflight)


def make_policy(name: str, *, load_factor: float = 1.25) -> Policy:
    if name == "round_robin":
        return RoundRobin()
    if name == "session_affinity":
        return SessionAffinity(load_factor)
    if name == "least_loaded":
        return least_loaded
    raise ValueError(f"unknown routing policy {name!r}")
