from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gantry.sim.kvcache import (
    NONE_HASH,
    BlockRemoved,
    BlockStored,
    KVCache,
    block_hashes,
    event_hash,
    hash_block,
    num_gpu_blocks,
)


def test_hashes_chain_on_parent_and_only_cover_full_blocks():
    toks = list(range(40))
    hs = block_hashes(toks, 16)
    assert len(hs) == 2  # 40 tokens -> two full blocks
    assert hs[0] == hash_block(NONE_HASH, tuple(range(16)), None)
    assert hs[1] == hash_block(hs[0], tuple(range(16, 32)), None)
    # Same second block after a different first block hashes differently (chained).
    other = block_hashes([99, *toks[1:]], 16)
    assert other[1] != hs[1]


def test_event_hash_is_low_64_bits_big_endian():
    digest = bytes(range(32))
    assert event_hash(digest) == int.from_bytes(digest[-8:], "big")


def test_prefix_hit_is_block_aligned_and_leaves_last_token():
    kv = KVCache(10, 4)
    toks = list(range(8))
    hs = block_hashes(toks, 4)
    owned: list[int] = []
    assert kv.allocate(owned, [], 8)
    kv.cache_full_blocks(owned, hs, 0, toks)
    # An identical 8-token prompt may reuse only one block: the last token is recomputed.
    assert len(kv.lookup(hs, 8)) == 1
    # A longer prompt with the same prefix reuses both.
    assert len(kv.lookup(block_hashes([*toks, 50, 51], 4), 10)) == 2


def test_freed_blocks_stay_cached_until_reused_then_evicted_lru():
    kv = KVCache(4, 2)  # 3 usable blocks
    kv.collect_events = True
    a = [1, 2, 3, 4]
    ha = block_hashes(a, 2)
    owned: list[int] = []
    kv.allocate(owned, [], 4)
    kv.cache_full_blocks(owned, ha, 0, a)
    kv.free(owned)
    assert kv.usage == 0.0  # cached but unreferenced blocks count as free
    assert len(kv.lookup(ha, 5)) == 2
    other: list[int] = []
    assert kv.allocate(other, [], 6)  # needs all three blocks: evicts the cached ones
    events = kv.take_events()
    assert isinstance(events[0], BlockStored)
    removed = [e for e in events if isinstance(e, BlockRemoved)]
    assert sorted(h for e in removed for h in e.block_hashes) == sorted(map(event_hash, ha))
    assert kv.lookup(ha, 5) == []
    kv.check_invariants()


def test_allocation_fails_when_full_and_reserve_applies_pressure():
    kv = KVCache(5, 4)
    owned: list[int] = []
    assert kv.allocate(owned, [], 16)
    assert not kv.allocate([], [], 1)
    kv.free(owned)
    kv.reserve(3)
    assert kv.num_free == 1
    assert not kv.allocate([], [], 8)


def test_num_gpu_blocks_formula_llama8b_h100():
    gib = 1024**3
    blocks = num_gpu_blocks(
        gpu_memory_bytes=80 * gib,
        utilization=0.92,
        weight_bytes=16e9,
        kv_bytes_per_token=131072,
        block_size=16,
        activation_reserve_bytes=2 * gib,
    )
    tokens = blocks * 16
    assert 400_000 < tokens < 500_000  # ~54 GiB of KV at 128 KiB/token


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 40)), min_size=1, max_size=60))
def test_random_alloc_free_keeps_invariants(ops):
    kv = KVCache(12, 4)
    live: list[tuple[list[int], list[bytes]]] = []
    for kind, n in ops:
        if kind < 3:
            toks = [n % 5] * n  # repeated prefixes exercise cache hits
            hs = block_hashes(toks, 4)
            hit = kv.lookup(hs, n)
            owned: list[int] = []
            if kv.allocate(owned, hit, n):
                kv.cache_full_blocks(owned, hs, len(hit), toks)
                live.append((owned, hs))
        elif live:
            owned, _ = live.pop(0)
            kv.free(owned)
        kv.check_invariants()
        assert 0.0 <= kv.usage <= 1.0
    for owned, _ in live:
        kv.free(owned)
    assert kv.usage == 0.0
