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
from collections import OrderedDict
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


MAX_OPEN = 65_536  # requests awaiting a first token tracked at most (prefill scorer)


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
    * prefill (``prefill_weight``, for requests whose length in tokens is known): 1 - the
      prefill work the request would wait for and do on that engine, over the largest
      among the candidates. The work is the uncached tokens of the requests this policy
      sent there that have not had their first token yet, plus this request's own
      uncached tokens there (its length less the prefix the engine holds). This is the
      queue in the engine's unit of cost: a request behind a 10,000-token prefill waits
      longer than behind three short ones, which request counts cannot see.
      ``chosen`` adds the request's part to its engine, ``started`` (the caller, at the
      first token or the end of the attempt) takes it off; an entry not taken off within
      ``prefill_ttl_s`` expires, and at most ``MAX_OPEN`` are kept.

    Where every candidate has the same prefix score (a prompt nobody holds, or one everybody
    holds), the choice is the least prefill work queued (with the prefill scorer on), then
    ``least_loaded``'s: the live in-flight count is a better signal
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
        prefill_weight: float = 0.0,
        prefill_ttl_s: float = 60.0,
        block_size: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kv = kv
        self.approx = approx
        self.degraded = degraded
        self.weights = weights
        self.speculative_ttl_s = speculative_ttl_s
        self.clock = clock
        self._spec = Speculation(speculative_ttl_s, speculative_blocks, clock)
        self.prefill_weight = prefill_weight
        self.prefill_ttl_s = prefill_ttl_s
        self.block_size = block_size
        self.pending: dict[str, float] = {}  # engine -> uncached tokens before a first token
        self._open: OrderedDict[int, tuple[str, float, float]] = OrderedDict()
        self._last: tuple[RouteRequest, dict[str, float]] | None = None

    def __call__(
        self, req: RouteRequest, candidates: Sequence[EngineView], inflight: Mapping[str, int]
    ) -> EngineView:
        if len(candidates) == 1:
            return candidates[0]
        prefix = self.prefix_scores(req, candidates)
        work = self._work(req, candidates, prefix)
        if max(prefix) - min(prefix) < 1e-9:  # the caches do not tell them apart
            if work:  # the least prefill work queued, then the least loaded
                keys = [
                    (w, load_of(e, inflight), e.name) for w, e in zip(work, candidates, strict=True)
                ]
                return candidates[keys.index(min(keys))]
            return least_loaded(req, candidates, inflight)
        loads = [load_of(e, inflight) for e in candidates]
        hi = max(loads)
        wp, wq, wk = self.weights
        most = max(work) if work else 0.0
        wf = self.prefill_weight if most > 0 else 0.0
        keyed = []
        for i, (e, load, p) in enumerate(zip(candidates, loads, prefix, strict=True)):
            q = 1.0 if hi <= 0 else (hi - load) / hi
            k = 1.0 if e.kv_usage is None else 1.0 - min(max(e.kv_usage, 0.0), 1.0)
            f = 1.0 - work[i] / most if wf else 0.0
            keyed.append((-(wp * p + wq * q + wk * k + wf * f), load, e.name, i))
        return candidates[min(keyed)[3]]

    def _work(
        self, req: RouteRequest, candidates: Sequence[EngineView], prefix: Sequence[float]
    ) -> list[float]:
        """Per candidate: prefill tokens queued there by this policy plus the request's
        own uncached tokens there (empty without ``prefill_weight`` or a token count).
        Remembered for ``chosen``."""
        tokens = req.prompt_tokens
        if not self.prefill_weight or not tokens:
            return []
        chain = req.kv_chain or req.prefix_chain
        covered = min(tokens, len(chain) * self.block_size) if chain else 0
        own = {e.name: tokens - p * covered for e, p in zip(candidates, prefix, strict=True)}
        self._last = (req, own)
        return [self.pending.get(e.name, 0.0) + own[e.name] for e in candidates]

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

    def started(self, req: RouteRequest, engine: str) -> None:
        entry = self._open.pop(id(req), None)
        if entry is not None:
            self._settle(entry)

    def _settle(self, entry: tuple[str, float, float]) -> None:
        engine, tokens, _ = entry
        left = self.pending.get(engine, 0.0) - tokens
        if left > 0.5:
            self.pending[engine] = left
        else:
            self.pending.pop(engine, None)

    def _track(self, req: RouteRequest, engine: str) -> None:
        last, self._last = self._last, None
        if last is None or last[0] is not req or engine not in last[1]:
            return
        now = self.clock()
        while self._open:  # expired (never started: the caller lost track) or too many
            _, oldest = next(iter(self._open.items()))
            if now - oldest[2] < self.prefill_ttl_s and len(self._open) < MAX_OPEN:
                break
            self._settle(self._open.popitem(last=False)[1])
        tokens = last[1][engine]
        old = self._open.pop(id(req), None)
        if old is not None:  # a retry on another engine: the first attempt is over
            self._settle(old)
        self._open[id(req)] = (engine, tokens, now)
        self.pending[engine] = self.pending.get(engine, 0.0) + tokens

    def chosen(self, req: RouteRequest, engine: str) -> None:
        if self.prefill_weight:
            self._track(req, engine)
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
