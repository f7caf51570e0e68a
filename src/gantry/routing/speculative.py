"""Speculative cache entries: "this engine was just sent this chain", for a short while.

An engine's KV events for a prompt arrive only after its prefill, so a burst of requests
sharing a new prefix would scatter across engines meanwhile. ``KVAware`` records each
decision here and reads it beside the events (vllm-router's ``kv_aware`` does the same,
for 2 s).

Two generations of ``hash -> bitmask of engines`` (plain dicts: recording a 125-block
chain is a few C-level dict operations, not an LRU walk), rotated every ``ttl_s``, so an
entry lives between one and two TTLs. Bounded: a generation holding ``max_entries``
hashes rotates early, and engine bits are handed out afresh once both generations have
emptied (or past 62 engines, when everything speculative is forgotten at once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import or_

_MAX_BITS = 62


class Speculation:
    def __init__(
        self,
        ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._cur: dict[int, int] = {}
        self._prev: dict[int, int] = {}
        self._bit: dict[str, int] = {}
        self._name: dict[int, str] = {}  # the other way round
        self._rotate_at = clock() + ttl_s

    def add(self, engine: str, chain: Sequence[int]) -> None:
        self._age()
        bit = self._bit.get(engine)
        if bit is None:
            if len(self._bit) >= _MAX_BITS:
                self._cur, self._prev, self._bit, self._name = {}, {}, {}, {}
            bit = self._bit[engine] = 1 << len(self._bit)
            self._name[bit] = engine
        cur = self._cur
        if len(cur) + len(chain) > self.max_entries:
            self._prev, self._cur = cur, {}
            self._rotate_at = self.clock() + self.ttl_s
            cur = self._cur
        cur.update(zip(chain, map(or_, map(cur.get, chain, repeat(0)), repeat(bit)), strict=True))

    def match(self, chain: Sequence[int]) -> dict[str, int]:
        """Per engine with speculative entries for ``chain[0]``: how many leading blocks
        of ``chain`` it was sent (contiguous from the start)."""
        self._age()
        cur, prev = self._cur, self._prev
        if not chain or not (cur or prev):
            return {}
        live = cur.get(chain[0], 0) | prev.get(chain[0], 0)
        out: dict[str, int] = {}
        if not live:
            return out
        names = self._name
        cg, pg = cur.get, prev.get
        i = 1
        for h in chain[1:]:
            narrowed = live & (cg(h, 0) | pg(h, 0))
            if narrowed != live:
                _credit(out, names, live & ~narrowed, i)
                if not narrowed:
                    return out
                live = narrowed
            i += 1
        _credit(out, names, live, i)
        return out

    def __len__(self) -> int:
        """Speculative entries held (a hash in both generations counts twice)."""
        self._age()
        return len(self._cur) + len(self._prev)

    def _age(self) -> None:
        now = self.clock()
        if now < self._rotate_at:
            return
        expired = now >= self._rotate_at + self.ttl_s
        self._prev = {} if expired else self._cur
        self._cur = {}
        if expired:
            self._bit, self._name = {}, {}
        self._rotate_at = now + self.ttl_s

    def __repr__(self) -> str:
        return f"<Speculation ttl={self.ttl_s}s entries={len(self._cur) + len(self._prev)}>"


def _credit(out: dict[str, int], names: dict[int, str], bits: int, count: int) -> None:
    while bits:
        low = bits & -bits
        out[names[low]] = count
        bits ^= low
