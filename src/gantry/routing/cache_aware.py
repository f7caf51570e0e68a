"""Cache-aware policies: send a prompt where its prefix is already cached, within load.

* ``PrefixAware`` is vllm-router's ``cache_aware`` over an approximate index of the
  router's own decisions (``text_chain`` hashes): cache affinity unless the pool is
  imbalanced, or the best match is not above ``cache_threshold``.
* ``KVAware`` is llm-d's weighted scoring (prefix 3, queue 2, KV-cache headroom 2) with
  the prefix score read from an index fed by the engines' KV events, falling back to the
  approximate index for engines whose events are missing (``degraded``).

Both are pure given their indexes: ``__call__`` only reads them, ``chosen`` writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from gantry.routing.base import RouteRequest, least_loaded, load_of
from gantry.routing.blocks import BlockIndex
from gantry.routing.snapshot import EngineView
from gantry.routing.speculative import Speculation


class PrefixAware:
    """vllm-router ``cache_aware`` semantics over ``req.prefix_chain``.

    1. Imbalanced (max load - min load > ``balance_abs`` and max > min x
       ``balance_rel``): the least-loaded engine.
    2. Otherwise the engine with the longest contiguous match, if matched blocks / chain
       length is strictly above ``cache_threshold`` (exactly 50% misses at 0.5); ties go
       to the less loaded, then the lower name. Otherwise the least-loaded engine.

    Whatever was chosen, ``chosen`` inserts the chain under it. No chain: least loaded.
    """

    def __init__(
        self,
        index: BlockIndex,
        *,
        cache_threshold: float = 0.5,
        balance_abs: float = 32,
        balance_rel: float = 1.5,
    ) -> None:
        self.index = index
        self.cache_threshold = cache_threshold
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel

    def __call__(
        self, req: RouteRequest, candidates: Sequence[EngineView], inflight: Mapping[str, int]
    ) -> EngineView:
        chain = req.prefix_chain
        if not chain or len(candidates) == 1:
            return least_loaded(req, candidates, inflight)
        loads = [load_of(e, inflight) for e in candidates]
        hi, lo = max(loads), min(loads)
        if hi - lo > self.balance_abs and hi > lo * self.balance_rel:
            return least_loaded(req, candidates, inflight)
        matched = self.index.match(chain)
        keyed = [
            (-matched.get(e.name, 0), load, e.name, i)
            for i, (e, load) in enumerate(zip(candidates, loads, strict=True))
        ]
        neg_hits, _, _, i = min(keyed)
        if -neg_hits / len(chain) > self.cache_threshold:
            return candidates[i]
        return least_loaded(req, candidates, inflight)

    def chosen(self, req: RouteRequest, engine: str) -> None:
        if req.prefix_chain:
            self.index.add(engine, req.prefix_chain)

    def __repr__(self) -> str:
        return (
            f"<PrefixAware threshold={self.cache_threshold} balance={self.balance_abs}/"
            f"{self.balance_rel} {self.index!r}>"
        )


def _never(name: str) -> bool:
    return False


class KVAware:
    """llm-d style weighted scorers, each clamped to [0, 1], highest sum wins.

    * prefix: matched blocks / chain length. From ``kv`` (KV events) over
      ``req.kv_chain`` for healthy engines; from ``approx`` over ``req.prefix_chain`` for
      engines where ``degraded(name)`` is true, or for all when ``req.kv_chain`` is None.
    * queue: 1 - load / the largest load among the candidates, on ``load_of`` (1 for all
      when every engine is idle). Relative to the busiest engine rather than min-max
      normalised: the load counts running requests, so min-max would make a difference
      of one request weigh as much as a whole cached prompt (llm-d's queue scorer is
      min-max over the waiting queue, which stays 0 until an engine saturates).
    * kv: 1 - ``kv_usage`` (1 when unknown).

    Where every candidate has the same prefix score (a prompt nobody holds, or one everybody
    holds), the choice is ``least_loaded``'s: the live in-flight count is a better signal
    than KV usage scraped seconds ago, which would herd such requests onto one engine until
    the next scrape. Ties go to the less loaded, then the lower name. ``chosen`` records the
    decision in ``approx`` (so the fallback stays warm) and, for an engine with live events,
    adds the chain as a speculative entry: the engine's KV events arrive only after its
    prefill, and a burst of requests sharing a new prefix should not scatter meanwhile
    (vllm-router's ``kv_aware`` does the same, for 2 s). Speculative entries
    (``gantry.routing.speculative``, at most ``speculative_blocks`` hashes a generation)
    live between one and two ``speculative_ttl_s`` and never mask or delete what the
    events say. ``speculative_ttl_s=0`` turns this off.
    """

    def __init__(
        self,
        kv: BlockIndex,
        approx: BlockIndex,
        *,
        degraded: Callable[[str], bool] = _never,
        weights: tuple[float, float, float] = (3.0, 2.0, 2.0),  # prefix, queue, kv usage
        speculative_ttl_s: float = 2.0,
        speculative_blocks: int = 32_768,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kv = kv
        self.approx = approx
        self.degraded = degraded
        self.weights = weights
        self.speculative_ttl_s = speculative_ttl_s
        self.clock = clock
        self._spec = Speculation(speculative_ttl_s, speculative_blocks, clock)

    def __call__(
        self, req: RouteRequest, candidates: Sequence[EngineView], inflight: Mapping[str, int]
    ) -> EngineView:
        if len(candidates) == 1:
            return candidates[0]
        prefix = self.prefix_scores(req, candidates)
        if max(prefix) - min(prefix) < 1e-9:  # the caches do not tell them apart
            return least_loaded(req, candidates, inflight)
        loads = [load_of(e, inflight) for e in candidates]
        hi = max(loads)
        wp, wq, wk = self.weights
        keyed = []
        for i, (e, load, p) in enumerate(zip(candidates, loads, prefix, strict=True)):
            q = 1.0 if hi <= 0 else (hi - load) / hi
            k = 1.0 if e.kv_usage is None else 1.0 - min(max(e.kv_usage, 0.0), 1.0)
            keyed.append((-(wp * p + wq * q + wk * k), load, e.name, i))
        return candidates[min(keyed)[3]]

    def prefix_scores(self, req: RouteRequest, candidates: Sequence[EngineView]) -> list[float]:
        """Each candidate's prefix score in [0, 1], in candidate order."""
        kv_chain, approx_chain = req.kv_chain, req.prefix_chain
        precise = [bool(kv_chain) and not self.degraded(e.name) for e in candidates]
        kv_hits = self._kv_match(kv_chain) if kv_chain and any(precise) else {}
        approx_hits = self.approx.match(approx_chain) if approx_chain and not all(precise) else {}
        out: list[float] = []
        for e, use_kv in zip(candidates, precise, strict=True):
            if use_kv:
                assert kv_chain
                out.append(kv_hits.get(e.name, 0) / len(kv_chain))
            elif approx_chain:
                out.append(approx_hits.get(e.name, 0) / len(approx_chain))
            else:
                out.append(0.0)
        return out

    def chosen(self, req: RouteRequest, engine: str) -> None:
        degraded = self.degraded(engine)
        if req.prefix_chain:  # kept roughly warm (no LRU touch) while the events are live
            self.approx.add(engine, req.prefix_chain, touch=degraded)
        if self.speculative_ttl_s > 0 and req.kv_chain and not degraded:
            self._spec.add(engine, req.kv_chain)

    def _kv_match(self, chain: Sequence[int]) -> dict[str, int]:
        hits = self.kv.match(chain)
        if self.speculative_ttl_s > 0:
            for name, n in self._spec.match(chain).items():
                if n > hits.get(name, 0):
                    hits[name] = n
        return hits

    def __repr__(self) -> str:
        return f"<KVAware weights={self.weights} kv={self.kv!r} approx={self.approx!r}>"
