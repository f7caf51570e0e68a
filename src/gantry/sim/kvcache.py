"""Paged KV cache with automatic prefix caching, as vLLM's v1 block pool does it.

* Blocks hold ``block_size`` tokens; block 0 is the permanent null block.
* A full block's hash chains on its parent's: ``H((parent, tuple(tokens), extra))``
  with ``H = sha256(pickle(...))`` (vLLM's default ``sha256`` algorithm; the hashing
  itself is ``gantry.protocol.block_hashes``).
* Freed blocks go to the tail of an LRU free queue but keep their hash, so a later
  request can reuse them; a cached block is evicted (``BlockRemoved``) only when the
  queue hands it out again.
* A prefix hit is block-aligned and capped at ``num_tokens - 1``.

Pure data structure: no I/O, no clock. Events are collected for the caller to publish.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

# The hashing lives in ``gantry.protocol`` (the gateway hashes prompts the same way);
# re-exported here for the simulator's callers.
from gantry.protocol import NONE_HASH as NONE_HASH
from gantry.protocol import block_hashes as block_hashes
from gantry.protocol import event_hash, salt_keys
from gantry.protocol import hash_block as hash_block


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    extra_keys: list[tuple[Any, ...] | None] | None = None  # one entry per block


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: list[int]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class KVCache:
    """The block pool. Per-request state is the list of block ids it owns."""

    def __init__(self, num_blocks: int, block_size: int = 16, *, prefix_caching: bool = True):
        if num_blocks < 2:
            raise ValueError("the KV cache needs at least 2 blocks")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._ref = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(1, num_blocks))
        self._cached: dict[bytes, int] = {}
        self._reserved = 0  # blocks held back by fault injection (KV pressure)
        self.events: list[KVEvent] = []
        self.collect_events = False

    # -- capacity -----------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free) - self._reserved

    @property
    def usage(self) -> float:
        return 1.0 - max(0, self.num_free) / (self.num_blocks - 1)

    def reserve(self, blocks: int) -> None:
        """Hold ``blocks`` free blocks back (simulated KV pressure)."""
        self._reserved = max(0, min(blocks, self.num_blocks - 2))

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- prefix cache ---------------------------------------------------------
    def lookup(self, hashes: list[bytes], num_tokens: int) -> list[int]:
        """Cached blocks for the longest prefix, leaving at least one token to compute."""
        if not self.prefix_caching:
            return []
        limit = (num_tokens - 1) // self.block_size
        hit: list[int] = []
        for h in hashes[:limit]:
            b = self._cached.get(h)
            if b is None:
                break
            hit.append(b)
        return hit

    # -- allocation -----------------------------------------------------------
    def can_allocate(self, owned: int, computed: list[int], total_tokens: int) -> bool:
        need = self.blocks_for(total_tokens) - owned - len(computed)
        evictable_hits = sum(1 for b in computed if self._ref[b] == 0)
        return need + evictable_hits <= self.num_free

    def allocate(self, owned: list[int], computed: list[int], total_tokens: int) -> bool:
        """Grow ``owned`` (in place) to cover ``total_tokens``; touch ``computed`` hits."""
        if not self.can_allocate(len(owned), computed, total_tokens):
            return False
        for b in computed:
            if self._ref[b] == 0:
                del self._free[b]
            self._ref[b] += 1
        owned.extend(computed)
        for _ in range(self.blocks_for(total_tokens) - len(owned)):
            owned.append(self._pop_free())
        return True

    def _pop_free(self) -> int:
        b, _ = self._free.popitem(last=False)
        h = self._hash[b]
        if h is not None:
            self._hash[b] = None
            if self._cached.get(h) == b:
                del self._cached[h]
                if self.collect_events:
                    self.events.append(BlockRemoved([event_hash(h)]))
        self._ref[b] = 1
        return b

    def free(self, owned: list[int]) -> None:
        """Release a request's blocks; tail blocks first so they are evicted first."""
        for b in reversed(owned):
            self._ref[b] -= 1
            if self._ref[b] == 0:
                self._free[b] = None
        owned.clear()

    def cache_full_blocks(
        self,
        owned: list[int],
        hashes: list[bytes],
        num_cached: int,
        tokens: list[int],
        *,
        salt: str | None = None,
    ) -> int:
        """Register blocks ``num_cached..len(hashes)`` of a request; returns the new count."""
        if not self.prefix_caching:
            return len(hashes)
        upto = min(len(hashes), len(owned))
        stored: list[int] = []
        for i in range(num_cached, upto):
            b, h = owned[i], hashes[i]
            if self._hash[b] is None and h not in self._cached:
                self._hash[b] = h
                self._cached[h] = b
                stored.append(i)
        if stored and self.collect_events:
            first, last = stored[0], stored[-1]
            bs = self.block_size
            self.events.append(
                BlockStored(
                    block_hashes=[event_hash(hashes[i]) for i in stored],
                    parent_block_hash=event_hash(hashes[first - 1]) if first else None,
                    token_ids=tokens[first * bs : (last + 1) * bs],
                    block_size=bs,
                    extra_keys=[salt_keys(salt) if i == 0 else None for i in stored],
                )
            )
        return upto

    def reset_prefix_cache(self) -> bool:
        """Drop every cached hash (only when no block is in use, as vLLM)."""
        if any(self._ref[1:]):
            return False
        for b in range(self.num_blocks):
            self._hash[b] = None
        self._cached.clear()
        if self.collect_events:
            self.events.append(AllBlocksCleared())
        return True

    def take_events(self) -> list[KVEvent]:
        ev, self.events = self.events, []
        return ev

    def check_invariants(self) -> None:
        """For tests: every block is either free (ref 0) or referenced, never both."""
        for b in range(1, self.num_blocks):
            assert (self._ref[b] == 0) == (b in self._free), b
            assert self._ref[b] >= 0
        for h, b in self._cached.items():
            assert self._hash[b] == h

    def __repr__(self) -> str:
        return (
            f"<KVCache blocks={self.num_blocks} free={self.num_free} "
            f"cached={len(self._cached)} usage={self.usage:.2f}>"
        )


def num_gpu_blocks(
    *,
    gpu_memory_bytes: int,
    utilization: float,
    weight_bytes: float,
    kv_bytes_per_token: float,
    block_size: int,
    activation_reserve_bytes: float,
    tp: int = 1,
) -> int:
    """vLLM's sizing: (memory x utilization - weights - activations) // bytes per block."""
    available = gpu_memory_bytes * utilization - weight_bytes / tp - activation_reserve_bytes
    per_block = kv_bytes_per_token / tp * block_size
    return max(0, int(available // per_block))
