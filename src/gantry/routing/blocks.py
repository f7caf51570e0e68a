"""Which engines hold which prefix blocks: a bounded index for cache-aware routing.

The same structure serves two feeds:

* vLLM KV events (``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared``) keyed by
  the engine's own block hashes (``gantry.protocol.BlockHasher`` hashes a prompt the
  same way), the precise view;
* the router's own decisions keyed by ``text_chain`` hashes of the prompt text, the
  approximate view (llm-d's approximate prefix producer, vllm-router's ``cache_aware``),
  for engines that publish no events.

Layout: ``hash -> bitmask of engine ids`` answers "who holds this block" in one dict
lookup, so ``match`` walks a chain narrowing one integer; each engine also keeps an LRU
of its hashes, which bounds it to ``max_blocks_per_engine`` and says what to forget.
"""

from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict
from collections.abc import Iterable, Sequence

# Bytes of one 64-bit hash as a Python int (values below 2**60 take 32: rounded up).
_HASH_INT_BYTES = sys.getsizeof(1 << 63)
# Engine bitmasks up to 256 are CPython's cached small ints and cost nothing per entry.
_SMALL_INT_MAX = 256


class BlockIndex:
    """Engines x block hashes, bounded per engine, with a fast contiguous-prefix match."""

    def __init__(self, max_blocks_per_engine: int) -> None:
        if max_blocks_per_engine < 1:
            raise ValueError("max_blocks_per_engine must be at least 1")
        self.max_blocks_per_engine = max_blocks_per_engine
        self._holders: dict[int, int] = {}  # block hash -> bitmask of engine ids
        self._lru: dict[str, OrderedDict[int, None]] = {}  # engine -> its hashes, oldest first
        self._bit: dict[str, int] = {}  # engine -> its bit (1 << id)
        self._names: list[str | None] = []  # id -> engine; freed ids are reused

    # -- updates ---------------------------------------------------------------
    def add(self, engine: str, hashes: Iterable[int], *, touch: bool = True) -> None:
        """Record that ``engine`` holds ``hashes`` (a chain, head first) and touch them.

        A chain is touched tail first, so its head is the most recently used: eviction
        takes the tails of chains before their heads, as vLLM frees a request's blocks
        tail first, and a shared head stays warmest. ``touch=False`` adds the blocks not
        held yet and leaves the held ones where they are in the LRU (cheaper: for an
        index that only needs to be roughly warm).
        """
        bit = self._bit.get(engine) or self._register(engine)
        lru = self._lru[engine]
        holders = self._holders
        held = holders.get
        move = lru.move_to_end
        seq = hashes if isinstance(hashes, Sequence) else list(hashes)
        for h in reversed(seq):
            if h in lru:
                if touch:
                    move(h)
            else:
                lru[h] = None
                holders[h] = held(h, 0) | bit
        excess = len(lru) - self.max_blocks_per_engine
        if excess > 0:  # _unset inlined: this runs for most adds once the index is full
            pop, keep = lru.popitem, ~bit
            for _ in range(excess):
                old = pop(False)[0]
                rest = holders[old] & keep
                if rest:
                    holders[old] = rest
                else:
                    del holders[old]

    def remove(self, engine: str, hashes: Iterable[int]) -> None:
        """``engine`` no longer holds ``hashes`` (unknown ones are ignored)."""
        lru = self._lru.get(engine)
        if lru is None:
            return
        bit = self._bit[engine]
        for h in hashes:
            if h in lru:
                del lru[h]
                self._unset(h, bit)

    def clear(self, engine: str) -> None:
        """Forget everything about ``engine`` (its cache was reset, or it left the pool)."""
        lru = self._lru.pop(engine, None)
        if lru is None:
            return
        bit = self._bit.pop(engine)
        for h in lru:
            self._unset(h, bit)
        self._names[bit.bit_length() - 1] = None

    # -- queries ---------------------------------------------------------------
    def match(self, chain: Sequence[int]) -> dict[str, int]:
        """For every known engine, how many leading blocks of ``chain`` it holds.

        Contiguous from the start: a prefix cache only helps up to its first miss.
        """
        out = dict.fromkeys(self._bit, 0)
        if not chain:
            return out
        holders = self._holders
        live = holders.get(chain[0], 0)
        if not live:
            return out
        i = 1
        for h in chain[1:]:
            narrowed = live & holders.get(h, 0)
            if narrowed != live:
                self._credit(out, live & ~narrowed, i)
                if not narrowed:
                    return out
                live = narrowed
            i += 1
        self._credit(out, live, i)
        return out

    def blocks(self, engine: str | None = None) -> int:
        """Blocks held by ``engine``, or by all engines together (a shared block counts
        once per engine)."""
        if engine is not None:
            lru = self._lru.get(engine)
            return len(lru) if lru is not None else 0
        return sum(len(lru) for lru in self._lru.values())

    def engines(self) -> list[str]:
        return sorted(self._bit)

    def memory_bytes(self) -> int:
        """Estimated bytes held, in O(engines): the containers' own sizes
        (``sys.getsizeof``, which for dicts and OrderedDicts includes their tables and
        link nodes), one 64-bit int object per LRU entry (a holder-map key is the int
        object of the entry that first added it, so it is not counted again; it outlives
        that entry only when that engine drops a block others still hold), and, beyond
        8 engine ids, one bitmask int per distinct hash (up to 8 ids the masks are
        CPython's cached small ints). Within 15% of tracemalloc (``tests/unit``)."""
        entries = sum(len(lru) for lru in self._lru.values())
        size = sys.getsizeof(self._holders) + sys.getsizeof(self._lru) + sys.getsizeof(self._bit)
        size += sum(sys.getsizeof(lru) for lru in self._lru.values())
        size += entries * _HASH_INT_BYTES
        top = 1 << max(len(self._names) - 1, 0)
        if top > _SMALL_INT_MAX:
            size += len(self._holders) * sys.getsizeof(top)
        return size

    def __len__(self) -> int:
        """Distinct block hashes held by any engine."""
        return len(self._holders)

    def __repr__(self) -> str:
        per = ", ".join(f"{n}={len(self._lru[n])}" for n in self.engines())
        return f"<BlockIndex max={self.max_blocks_per_engine} distinct={len(self)} [{per}]>"

    # -- internals -------------------------------------------------------------
    def _register(self, engine: str) -> int:
        try:
            idx = self._names.index(None)
            self._names[idx] = engine
        except ValueError:
            idx = len(self._names)
            self._names.append(engine)
        self._bit[engine] = bit = 1 << idx
        self._lru[engine] = OrderedDict()
        return bit

    def _unset(self, h: int, bit: int) -> None:
        rest = self._holders[h] & ~bit
        if rest:
            self._holders[h] = rest
        else:
            del self._holders[h]

    def _credit(self, out: dict[str, int], bits: int, count: int) -> None:
        names = self._names
        while bits:
            low = bits & -bits
            name = names[low.bit_length() - 1]
            assert name is not None
            out[name] = count
            bits ^= low


def text_chain(text: str, block_chars: int = 64, seed: str = "") -> list[int]:
    """Approximate prefix hashes of ``text``: one per full block of ``block_chars``
    characters, each covering its predecessor's, seeded (model name, ``cache_salt``), so
    two prompts share exactly the leading hashes of the blocks they share.

    Characters, not tokens (~4 characters a token: 64 characters ~ a 16-token block), as
    llm-d's approximate prefix producer and vllm-router's ``cache_aware`` do, so routing
    needs no tokenizer. ~0.6 us a block (blake2b; ``benchmarks/routing_decision.py``).
    """
    if block_chars < 1:
        raise ValueError("block_chars must be at least 1")
    prev = hashlib.blake2b(seed.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    out: list[int] = []
    for i in range(len(text) // block_chars):
        block = text[i * block_chars : (i + 1) * block_chars].encode("utf-8", "surrogatepass")
        prev = hashlib.blake2b(prev + block, digest_size=8).digest()
        out.append(int.from_bytes(prev, "big"))
    return out
