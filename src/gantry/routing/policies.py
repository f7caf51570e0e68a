"""Routing policies: pure choices over (request, snapshot, in-flight counts).

The calling convention and the shared load helpers are in ``base``; the cache-aware
policies in ``cache_aware``. ``make_policy`` builds any of them by name.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gantry.routing.base import (
    Policy,
    RouteRequest,
    least_loaded,
    load_cap,
    load_key,
    load_of,
    record_choice,
    record_started,
)
from gantry.routing.blocks import BlockIndex
from gantry.routing.cache_aware import KVAware, PrefixAware
from gantry.routing.snapshot import EngineView

__all__ = [  # the base names stay importable from here
    "DEFAULT_APPROX_BLOCKS",
    "Policy",
    "PowerOfTwo",
    "RoundRobin",
    "RouteRequest",
    "SessionAffinity",
    "StickyLeastLoaded",
    "least_loaded",
    "load_of",
    "make_policy",
    "record_choice",
    "record_started",
]


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
        cap = load_cap(candidates, inflight, self.load_factor)
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


class PowerOfTwo:
    """The less loaded of two distinct random candidates (Mitzenmacher's two choices):
    close to least-loaded without every gateway worker herding onto the same engine."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def __call__(
        self, req: RouteRequest, candidates: Sequence[EngineView], inflight: Mapping[str, int]
    ) -> EngineView:
        if len(candidates) < 2:
            return candidates[0]
        i, j = self.rng.sample(range(len(candidates)), 2)
        return min(candidates[i], candidates[j], key=lambda e: load_key(e, inflight))


class StickyLeastLoaded:
    """A session keeps its engine while that engine is a candidate and its load is below
    ``load_factor`` x the average (+1); a new, expired or displaced session goes to the
    least-loaded engine and stays there.

    Sessions live in an LRU of at most ``max_sessions``, each forgotten ``ttl_s`` after
    its last request (vllm-router's ``sticky_least_loaded`` expires idle sessions after
    2 h). The session's engine is recorded by ``chosen``.
    """

    def __init__(
        self,
        max_sessions: int = 100_000,
        ttl_s: float = 7200.0,
        load_factor: float = 1.25,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.load_factor = load_factor
        self.clock = clock
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()  # -> engine, seen

    def __call__(
        self, req: RouteRequest, candidates: Sequence[EngineView], inflight: Mapping[str, int]
    ) -> EngineView:
        held = self._sessions.get(req.session) if req.session else None
        if held is not None and self.clock() - held[1] <= self.ttl_s:
            cap = load_cap(candidates, inflight, self.load_factor)
            for e in candidates:
                if e.name == held[0] and load_of(e, inflight) < cap:
                    return e
        return least_loaded(req, candidates, inflight)

    def chosen(self, req: RouteRequest, engine: str) -> None:
        if not req.session:
            return
        now = self.clock()
        sessions = self._sessions
        sessions[req.session] = (engine, now)
        sessions.move_to_end(req.session)
        while sessions:  # oldest first: drop the expired and anything over the bound
            _, (_, seen) = next(iter(sessions.items()))
            if len(sessions) <= self.max_sessions and now - seen <= self.ttl_s:
                break
            sessions.popitem(last=False)

    def __len__(self) -> int:
        return len(self._sessions)

    def __repr__(self) -> str:
        return f"<StickyLeastLoaded sessions={len(self)}/{self.max_sessions} ttl={self.ttl_s}s>"


# The approximate index's default bound: llm-d's per-engine LRU (31,250 blocks of 16
# tokens ~ 500k tokens, the KV cache an 8B model leaves on an H100).
DEFAULT_APPROX_BLOCKS = 31_250


def make_policy(
    name: str,
    *,
    load_factor: float = 1.25,
    prefix_index: BlockIndex | None = None,
    kv_index: BlockIndex | None = None,
    degraded: Callable[[str], bool] | None = None,
    rng: random.Random | None = None,
    **params: Any,
) -> Policy:
    """A policy by name, with its state injected.

    ``load_factor`` bounds ``session_affinity`` and ``sticky_least_loaded`` (ignored by the
    others). ``prefix_index`` is the approximate index of ``prefix`` and ``kv_aware``
    (a fresh one of ``DEFAULT_APPROX_BLOCKS`` per engine if not given); ``kv_index`` is
    the KV-event index ``kv_aware`` needs, ``degraded`` its test for engines whose events
    are missing; ``rng`` drives ``power_of_two``. ``params`` go to the policy's
    constructor (``cache_threshold=``, ``weights=``, ``ttl_s=``, ...).
    """
    try:
        return _build(name, load_factor, prefix_index, kv_index, degraded, rng, params)
    except TypeError as exc:  # an unknown or ill-typed parameter for this policy
        raise ValueError(f"routing policy {name!r}: {exc}") from exc


def _build(
    name: str,
    load_factor: float,
    prefix_index: BlockIndex | None,
    kv_index: BlockIndex | None,
    degraded: Callable[[str], bool] | None,
    rng: random.Random | None,
    params: dict[str, Any],
) -> Policy:
    simple = {"round_robin", "least_loaded", "session_affinity", "power_of_two"}
    if name in simple and params:
        raise TypeError(f"unexpected parameters {sorted(params)}")
    if name == "round_robin":
        return RoundRobin()
    if name == "least_loaded":
        return least_loaded
    if name == "session_affinity":
        return SessionAffinity(load_factor)
    if name == "power_of_two":
        return PowerOfTwo(rng or random.Random())
    if name == "sticky_least_loaded":
        return StickyLeastLoaded(load_factor=load_factor, **params)
    approx = prefix_index if prefix_index is not None else BlockIndex(DEFAULT_APPROX_BLOCKS)
    if name == "prefix":
        return PrefixAware(approx, **params)
    if name == "kv_aware":
        if kv_index is None:
            raise ValueError("routing policy 'kv_aware' needs kv_index (fed by KV events)")
        return KVAware(kv_index, approx, degraded=degraded or (lambda _: False), **params)
    raise ValueError(f"unknown routing policy {name!r}")
