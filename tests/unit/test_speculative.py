"""Speculative entries: contiguous matches per engine, one to two TTLs, bounded."""

from __future__ import annotations

import pytest

from gantry.routing.speculative import Speculation
from tests.helpers import ManualClock as Clock


def test_matches_are_contiguous_from_the_start_per_engine():
    s = Speculation(2.0, 1000, Clock())
    s.add("a", [1, 2, 3, 4])
    s.add("b", [1, 2, 9])
    assert s.match([1, 2, 3, 4, 5]) == {"a": 4, "b": 2}
    assert s.match([5, 1, 2]) == {}
    assert s.match([]) == {}
    s.add("b", [1, 2, 3])
    assert s.match([1, 2, 3, 4]) == {"a": 4, "b": 3}


def test_an_entry_lives_between_one_and_two_ttls():
    clock = Clock()
    s = Speculation(2.0, 1000, clock)
    s.add("a", [1, 2])
    clock.now += 1.9
    assert s.match([1, 2]) == {"a": 2}
    clock.now += 0.2  # rotated: the entry is in the previous generation
    assert s.match([1, 2]) == {"a": 2}
    s.add("b", [1])
    clock.now += 2.0  # rotated again: "a" is gone, "b" (one TTL old) is not
    assert s.match([1, 2]) == {"b": 1}
    clock.now += 4.1  # both generations expired
    assert s.match([1, 2]) == {} and len(s) == 0


def test_bounded_a_full_generation_rotates_early():
    s = Speculation(60.0, 10, Clock())
    for i in range(100):
        s.add(f"e{i % 3}", [i * 10 + j for j in range(4)])
        assert len(s) <= 20
    assert s.match([990, 991, 992, 993]) == {"e0": 4}
    assert s.match([0, 1]) == {}  # long rotated out


def test_many_engines_never_exhaust_the_bits():
    clock = Clock()
    s = Speculation(2.0, 10_000, clock)
    for i in range(200):
        s.add(f"e{i}", [7, i])
        assert s.match([7, i])[f"e{i}"] == 2


def test_bad_bound_is_refused():
    with pytest.raises(ValueError):
        Speculation(2.0, 0)
