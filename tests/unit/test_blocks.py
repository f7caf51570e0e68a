from __future__ import annotations

import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gantry.routing import BlockIndex, text_chain


def index(max_blocks: int = 100, **held: list[int]) -> BlockIndex:
    idx = BlockIndex(max_blocks)
    for engine, hashes in held.items():
        idx.add(engine, hashes)
    return idx


@pytest.mark.parametrize(
    ("held", "chain", "want"),
    [
        ({"a": [1, 2, 3]}, [1, 2, 3], {"a": 3}),
        ({"a": [1, 2, 3]}, [1, 2, 3, 4, 5], {"a": 3}),
        ({"a": [1, 2, 4]}, [1, 2, 3, 4], {"a": 2}),  # contiguous: 4 after the gap counts not
        ({"a": [2, 3]}, [1, 2, 3], {"a": 0}),  # a miss on the first block is no match
        ({"a": [1, 2, 3], "b": [1]}, [1, 2, 3], {"a": 3, "b": 1}),
        ({"a": [1, 2], "b": [1, 2, 3, 4]}, [1, 2, 3, 4], {"a": 2, "b": 4}),
        ({"a": [1, 9], "b": [1, 2]}, [1, 2, 9], {"a": 1, "b": 2}),
        ({"a": [1], "b": [5]}, [], {"a": 0, "b": 0}),
        ({}, [1, 2], {}),
    ],
)
def test_match_counts_leading_blocks_per_engine(held, chain, want):
    assert index(**held).match(chain) == want


def test_remove_and_clear():
    idx = index(a=[1, 2, 3], b=[1, 2, 3])
    idx.remove("a", [2, 99])
    idx.remove("nobody", [1])
    assert idx.match([1, 2, 3]) == {"a": 1, "b": 3}
    assert (idx.blocks("a"), idx.blocks("b"), idx.blocks(), len(idx)) == (2, 3, 5, 3)
    idx.clear("b")
    idx.clear("nobody")
    assert idx.engines() == ["a"] and idx.blocks("b") == 0
    assert idx.match([1, 2, 3]) == {"a": 1} and len(idx) == 2
    idx.clear("a")
    assert len(idx) == 0 and idx.blocks() == 0 and idx.engines() == []


def test_cleared_engine_ids_are_reused():
    idx = BlockIndex(10)
    for round_ in range(50):  # engines come and go: the bitmask does not widen
        idx.add(f"e{round_}", [round_])
        idx.clear(f"e{round_}")
    idx.add("x", [1])
    assert len(idx._names) == 1


def test_eviction_keeps_chain_heads_and_the_bound():
    idx = index(4, a=[1, 2, 3, 4, 5, 6])
    assert idx.blocks("a") == 4
    assert idx.match([1, 2, 3, 4, 5, 6]) == {"a": 4}  # the tail went, the head stayed


def test_eviction_takes_the_least_recently_touched_chain():
    idx = index(4, a=[1, 2])
    idx.add("a", [3, 4])
    idx.add("a", [1, 2])  # touched again
    idx.add("a", [5, 6])
    assert idx.match([1, 2]) == {"a": 2}
    assert idx.match([3, 4]) == {"a": 0}
    assert idx.match([5, 6]) == {"a": 2}


def test_bound_is_per_engine():
    idx = index(3, a=[1, 2, 3, 4], b=[1, 2])
    assert (idx.blocks("a"), idx.blocks("b")) == (3, 2)
    assert idx.match([1, 2, 3, 4]) == {"a": 3, "b": 2}


def test_refuses_a_zero_bound():
    with pytest.raises(ValueError):
        BlockIndex(0)


def test_repr_shows_sizes():
    assert repr(index(8, b=[1, 2], a=[2])) == "<BlockIndex max=8 distinct=2 [a=1, b=2]>"


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "clear"]),
        st.sampled_from(["a", "b", "c"]),
        st.lists(st.integers(0, 12), max_size=8),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, chain=st.lists(st.integers(0, 12), max_size=8))
def test_agrees_with_a_plain_model(ops, chain):
    """Per engine a list, most recently touched last: what the index must mirror."""
    limit = 5
    idx, model = BlockIndex(limit), {}
    for op, engine, hashes in ops:
        if op == "add":
            held = model.setdefault(engine, [])
            for h in reversed(hashes):
                if h in held:
                    held.remove(h)
                held.append(h)
            del held[: max(0, len(held) - limit)]
            idx.add(engine, hashes)
        elif op == "remove":
            if engine in model:
                model[engine] = [h for h in model[engine] if h not in hashes]
            idx.remove(engine, hashes)
        else:
            model.pop(engine, None)
            idx.clear(engine)
        assert all(idx.blocks(e) == len(held) <= limit for e, held in model.items())

    def leading(held: list[int]) -> int:
        n = 0
        while n < len(chain) and chain[n] in held:
            n += 1
        return n

    assert idx.match(chain) == {e: leading(held) for e, held in model.items()}
    assert len(idx) == len({h for held in model.values() for h in held})
    assert idx.engines() == sorted(model)


def fresh_chain(k: int) -> list[int]:
    """Chain ``k`` as new int objects, as KV events and text_chain deliver them."""
    rng = random.Random(k)
    return [rng.getrandbits(64) for _ in range(125)]


@pytest.mark.parametrize(
    ("engines", "limit"), [(1, 2_000), (8, 2_000), (20, 2_000), (8, 100_000), (20, 100_000)]
)
def test_memory_estimate_is_close_to_what_is_allocated(engines, limit):
    tracemalloc.start()
    try:
        idx = BlockIndex(limit)
        for i in range(600):  # 200 chains, each on up to 3 engines
            k = i % 200
            idx.add(f"e{(k + i // 200) % engines}", fresh_chain(k))
        allocated = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    estimate = idx.memory_bytes()
    assert 0.85 * allocated <= estimate <= 1.15 * allocated, (estimate, allocated)


@settings(max_examples=50, deadline=None)
@given(n_engines=st.integers(1, 12), limit=st.integers(1, 50), seed=st.integers(0, 99))
def test_memory_is_bounded_by_the_limit(n_engines, limit, seed):
    rng = random.Random(seed)
    idx = BlockIndex(limit)
    for _ in range(30):
        idx.add(f"e{rng.randrange(n_engines)}", [rng.getrandbits(64) for _ in range(20)])
    assert idx.blocks() <= n_engines * limit
    assert all(idx.blocks(e) <= limit for e in idx.engines())


# -- text_chain ------------------------------------------------------------------------


def test_text_chain_blocks_are_full_character_blocks():
    assert text_chain("x" * 63) == []
    assert len(text_chain("x" * 64)) == 1
    assert len(text_chain("x" * 200)) == 3
    assert len(text_chain("é" * 64)) == 1  # characters, not UTF-8 bytes
    assert len(text_chain("ab" * 10, block_chars=4)) == 5


def test_text_chain_shares_exactly_the_shared_leading_blocks():
    system = "You are a careful assistant. " * 20
    a = text_chain(system + "What is the capital of France? " * 4)
    b = text_chain(system + "Write a haiku about the sea, please. " * 4)
    shared = len(system) // 64
    assert a[:shared] == b[:shared]
    assert a[shared] != b[shared]


def test_text_chain_is_chained_and_seeded():
    one, two = "a" * 64, "b" * 64
    assert text_chain(one + two)[1] != text_chain(two + two)[1]  # covers its predecessor
    assert text_chain(one, seed="m1") != text_chain(one, seed="m2")
    assert text_chain(one + two, seed="m") == text_chain(one + two, seed="m")  # stable
    assert text_chain("\ud800" * 64)  # a lone surrogate from JSON does not raise
    with pytest.raises(ValueError):
        text_chain("x", block_chars=0)
