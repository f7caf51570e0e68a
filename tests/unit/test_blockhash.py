from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gantry.protocol import NONE_HASH, BlockHasher, block_hashes, event_hash, hash_block
from gantry.sim import kvcache

SALT = ("tenant-a",)  # vLLM: cache_salt is the first block's only extra key


def expected(tokens: list[int], block_size: int = 16, extra=None) -> list[int]:
    return [event_hash(d) for d in block_hashes(tokens, block_size, extra)]


def test_the_simulator_hashes_with_the_protocol_functions():
    assert kvcache.block_hashes is block_hashes
    assert kvcache.hash_block is hash_block
    assert kvcache.NONE_HASH is NONE_HASH


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 2**31 - 1), max_size=120),
    block_size=st.sampled_from([1, 4, 16]),
    salted=st.booleans(),
)
def test_hasher_equals_block_hashes_in_event_form(tokens, block_size, salted):
    extra = SALT if salted else None
    h = BlockHasher(block_size, max_entries=8)
    assert h.hashes(tokens, extra) == expected(tokens, block_size, extra)
    assert h.hashes(tokens, extra) == expected(tokens, block_size, extra)  # from the memo


@pytest.mark.parametrize(
    ("n_tokens", "n_blocks"), [(0, 0), (15, 0), (16, 1), (31, 1), (32, 2), (2000, 125)]
)
def test_only_full_blocks_are_hashed(n_tokens, n_blocks):
    assert len(BlockHasher().hashes(list(range(n_tokens)))) == n_blocks


def test_shared_prefix_is_hashed_once():
    rng = random.Random(1)
    system = [rng.randrange(128_000) for _ in range(1600)]  # 100 blocks
    h = BlockHasher()
    first = h.hashes([*system, *range(400)])
    assert (h.hits, h.misses) == (0, 125)
    second = h.hashes([*system, *range(1000, 1400)])
    assert (h.hits, h.misses) == (100, 150)
    assert first[:100] == second[:100] and first[100] != second[100]


def test_salt_changes_every_hash_and_does_not_leak_through_the_memo():
    tokens = list(range(64))
    h = BlockHasher()
    plain, salted = h.hashes(tokens), h.hashes(tokens, SALT)
    assert not set(plain) & set(salted)
    assert h.hashes(tokens) == plain == expected(tokens)
    assert h.hashes(tokens, SALT) == salted == expected(tokens, extra=SALT)


def test_memo_is_bounded_and_stays_correct():
    rng = random.Random(2)
    h = BlockHasher(block_size=4, max_entries=10)
    for _ in range(20):
        tokens = [rng.randrange(50) for _ in range(rng.randrange(80))]
        assert h.hashes(tokens) == expected(tokens, 4)
        assert len(h) <= 10
    assert "entries=10/10" in repr(h)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        BlockHasher(0)
    with pytest.raises(ValueError):
        BlockHasher(16, max_entries=0)
