from __future__ import annotations

import random
from collections import Counter

import pytest

from gantry.routing import (
    DEFAULT_APPROX_BLOCKS,
    BlockIndex,
    EngineView,
    KVAware,
    PoolSnapshot,
    PowerOfTwo,
    PrefixAware,
    RoundRobin,
    RouteRequest,
    SessionAffinity,
    StickyLeastLoaded,
    least_loaded,
    make_policy,
    record_choice,
    record_started,
)
from tests.helpers import ManualClock as FakeClock


def views(n: int, **load: float) -> list[EngineView]:
    return [
        EngineView(
            name=f"e{i}",
            url=f"http://e{i}",
            models=("m",),
            healthy=True,
            running=load.get(f"e{i}", 0.0),
        )
        for i in range(n)
    ]


def test_least_loaded_counts_gateway_inflight_and_engine_queue():
    es = views(3, e0=5, e1=1, e2=1)
    assert least_loaded(RouteRequest("m"), es, {"e1": 3, "e2": 0}).name == "e2"
    assert least_loaded(RouteRequest("m"), es, {"e1": 0, "e2": 9}).name == "e1"


def test_round_robin_cycles():
    rr = RoundRobin()
    es = views(3)
    assert [rr(RouteRequest("m"), es, {}).name for _ in range(6)] == ["e0", "e1", "e2"] * 2


def test_session_affinity_is_sticky_and_spreads_sessions():
    pol = SessionAffinity()
    es = views(4)
    first = {f"s{i}": pol(RouteRequest("m", session=f"s{i}"), es, {}).name for i in range(400)}
    again = {s: pol(RouteRequest("m", session=s), es, {}).name for s in first}
    assert first == again
    spread = Counter(first.values())
    assert len(spread) == 4 and min(spread.values()) > 50


def test_session_affinity_moves_only_the_removed_engines_sessions():
    pol = SessionAffinity()
    es = views(4)
    before = {f"s{i}": pol(RouteRequest("m", session=f"s{i}"), es, {}).name for i in range(400)}
    after = {s: pol(RouteRequest("m", session=s), es[:3], {}).name for s in before}
    moved = [s for s in before if before[s] != after[s]]
    assert all(before[s] == "e3" for s in moved)


def test_session_affinity_bounded_load_spills_over():
    pol = SessionAffinity(load_factor=1.25)
    es = views(2)
    home = pol(RouteRequest("m", session="hot"), es, {}).name
    other = "e1" if home == "e0" else "e0"
    chosen = pol(RouteRequest("m", session="hot"), es, {home: 50, other: 0})
    assert chosen.name == other


def test_snapshot_indexes_models_and_health():
    es = (EngineView("a", "u", ("m", "n"), True), EngineView("b", "u", ("m",), False))
    snap = PoolSnapshot.build(1, es)
    assert [e.name for e in snap.healthy_for("m")] == ["a"]
    assert snap.models() == ["m", "n"] and snap.healthy_for("zzz") == ()


def test_make_policy_names():
    assert make_policy("least_loaded") is least_loaded
    assert isinstance(make_policy("round_robin"), RoundRobin)


# -- cache-aware and load-aware policies ---------------------------------------------------


def engines(**spec: tuple[float, float | None]) -> list[EngineView]:
    """name=(load, kv_usage) -> candidates (the load as the engine's running count)."""
    return [
        EngineView(name=n, url=f"http://{n}", models=("m",), healthy=True, running=r, kv_usage=k)
        for n, (r, k) in spec.items()
    ]


CHAIN = list(range(1000, 1020))  # 20 blocks


def prefix_policy(held: int, **kw: float) -> PrefixAware:
    """e0 holds the first ``held`` blocks of CHAIN."""
    idx = BlockIndex(1000)
    idx.add("e0", CHAIN[:held])
    return PrefixAware(idx, **kw)


@pytest.mark.parametrize(
    ("held", "want"),
    [
        (9, "e1"),  # 45%: a miss, least loaded
        (10, "e1"),  # exactly 50%: a miss, as vllm-router
        (11, "e0"),  # 55%: cache affinity
        (20, "e0"),
        (0, "e1"),
    ],
)
def test_prefix_threshold_edges(held, want):
    es = engines(e0=(1, None), e1=(0, None))
    assert prefix_policy(held)(RouteRequest("m", prefix_chain=CHAIN), es, {}).name == want


@pytest.mark.parametrize(
    ("e0_load", "e1_load", "want"),
    [
        (40, 5, "e1"),  # 35 > 32 and 40 > 7.5: imbalanced, least loaded
        (30, 0, "e0"),  # 30 <= 32: balanced, cache affinity
        (33, 0, "e1"),  # 33 > 32 and 33 > 0
        (100, 67, "e0"),  # 33 > 32 but 100 <= 100.5: balanced
        (100, 66, "e1"),  # 34 > 32 and 100 > 99
    ],
)
def test_prefix_imbalance_thresholds(e0_load, e1_load, want):
    es = engines(e0=(e0_load, None), e1=(e1_load, None))
    assert prefix_policy(20)(RouteRequest("m", prefix_chain=CHAIN), es, {}).name == want


def test_prefix_imbalance_counts_gateway_inflight():
    es = engines(e0=(0, None), e1=(0, None))
    pol = prefix_policy(20)
    assert pol(RouteRequest("m", prefix_chain=CHAIN), es, {"e0": 40, "e1": 5}).name == "e1"


def test_prefix_without_chain_is_least_loaded_and_records_nothing():
    pol = prefix_policy(20)
    es = engines(e0=(3, None), e1=(2, None))
    assert pol(RouteRequest("m"), es, {}).name == "e1"
    assert pol(RouteRequest("m", prefix_chain=[]), es, {}).name == "e1"
    record_choice(pol, RouteRequest("m"), "e1")
    assert pol.index.engines() == ["e0"]


def test_prefix_records_the_choice_and_follows_it():
    pol = PrefixAware(BlockIndex(1000))
    es = engines(e0=(0, None), e1=(0, None), e2=(0, None))
    req = RouteRequest("m", prefix_chain=CHAIN)
    first = pol(req, es, {})
    assert first.name == "e0"  # all cold: least loaded, ties by name
    record_choice(pol, req, first.name)
    busier = engines(e0=(5, None), e1=(0, None), e2=(0, None))
    assert pol(req, busier, {}).name == "e0"  # warm beats 5 requests of queue
    assert pol.index.match(CHAIN) == {"e0": 20}


def test_prefix_ignores_engines_that_are_not_candidates():
    pol = prefix_policy(20)
    es = engines(e1=(2, None), e2=(1, None))
    assert pol(RouteRequest("m", prefix_chain=CHAIN), es, {}).name == "e2"


def test_prefix_ties_go_to_the_less_loaded_then_the_name():
    idx = BlockIndex(100)
    for n in ("a", "b", "c"):
        idx.add(n, CHAIN)
    pol = PrefixAware(idx)
    req = RouteRequest("m", prefix_chain=CHAIN)
    assert pol(req, engines(a=(2, None), b=(1, None), c=(1, None)), {}).name == "b"


KV = list(range(500, 510))  # 10 blocks, precise


def kv_policy(
    kv: dict[str, int] | None = None,
    approx: dict[str, int] | None = None,
    degraded: tuple[str, ...] = (),
    **kw,
) -> KVAware:
    """``kv``/``approx``: engine -> leading blocks of KV/CHAIN it holds."""
    kv_idx, approx_idx = BlockIndex(1000), BlockIndex(1000)
    for n, held in (kv or {}).items():
        kv_idx.add(n, KV[:held])
    for n, held in (approx or {}).items():
        approx_idx.add(n, CHAIN[:held])
    return KVAware(kv_idx, approx_idx, degraded=lambda n: n in degraded, **kw)


@pytest.mark.parametrize(
    ("loads", "kv_held", "want", "why"),
    [
        # e0 holds all 10 blocks: prefix 3 + queue 0 + kv 2 = 5 vs e1 0 + 2 + 2 = 4
        ({"e0": (4, 0.0), "e1": (0, 0.0)}, {"e0": 10}, "e0", "prefix outweighs queue"),
        # half the prefix: 1.5 + 0 + 2 = 3.5 < 4
        ({"e0": (4, 0.0), "e1": (0, 0.0)}, {"e0": 5}, "e1", "queue outweighs half a prefix"),
        # KV almost full on e0: 3 + 0 + 0.2 = 3.2 < 4
        ({"e0": (4, 0.9), "e1": (0, 0.0)}, {"e0": 10}, "e1", "a full KV cache repels"),
        # unknown kv usage counts as empty
        ({"e0": (0, None), "e1": (0, 0.5)}, {}, "e0", "unknown usage scores 1"),
        # queue relative to the busiest: a 0 + 2 + 0.8, b 0 + 1 + 2, c 0.6 + 0 + 2
        ({"a": (0, 0.6), "b": (5, 0.0), "c": (10, 0.0)}, {"c": 2}, "b", "relative queue"),
        # 12 vs 10 in flight: queue 0 vs 1/6 (not 0 vs 1, as min-max would have it), so
        # half a cached prompt keeps the request: 1.5 + 0 + 2 = 3.5 > 0.33 + 2 = 2.33
        ({"e0": (12, 0.0), "e1": (10, 0.0)}, {"e0": 5}, "e0", "small differences stay small"),
        # an idle engine against a busy one still counts in full (see the cases above)
        ({"e0": (12, 0.0), "e1": (0, 0.0)}, {"e0": 5}, "e1", "idle beats half a prefix"),
        # out-of-range usage is clamped: e0 0 + 2 + 2 (not 3) < e1 0.9 + 2 + 2
        ({"e0": (0, -0.5), "e1": (0, 0.0)}, {"e1": 3}, "e1", "clamped"),
        # the same prefix score everywhere: least loaded, whatever the (scraped) KV usage
        ({"e0": (3, 0.0), "e1": (2, 0.9)}, {}, "e1", "no prefix: least loaded"),
        ({"e0": (3, 0.0), "e1": (2, 0.9)}, {"e0": 10, "e1": 10}, "e1", "equal: least loaded"),
    ],
)
def test_kv_aware_weighted_scores(loads, kv_held, want, why):
    es = engines(**loads)
    req = RouteRequest("m", kv_chain=KV)
    assert kv_policy(kv_held)(req, es, {}).name == want, why


def test_kv_aware_weights_are_configurable():
    es = engines(e0=(4, 0.0), e1=(0, 0.0))
    req = RouteRequest("m", kv_chain=KV)
    assert kv_policy({"e0": 10})(req, es, {}).name == "e0"
    assert kv_policy({"e0": 10}, weights=(1, 2, 2))(req, es, {}).name == "e1"
    assert kv_policy({"e0": 10}, weights=(0, 0, 0))(req, es, {}).name == "e1"  # tie: load


def test_kv_aware_ties_go_to_the_less_loaded_then_the_name():
    # b: prefix 1 x 3 + queue 0 = 3; a and c: queue 1 x 2 + ... equal loads -> name
    es = engines(a=(0, None), b=(0, None), c=(0, None))
    assert kv_policy()(RouteRequest("m", kv_chain=KV), es, {}).name == "a"
    es = engines(a=(1, None), b=(0, None), c=(0, None))
    pol = kv_policy(weights=(3, 0, 2))  # queue ignored: a, b, c tie on score
    assert pol(RouteRequest("m", kv_chain=KV), es, {}).name == "b"


def test_kv_aware_degraded_engines_fall_back_to_the_approximate_index():
    es = engines(e0=(0, None), e1=(0, None))
    req = RouteRequest("m", kv_chain=KV, prefix_chain=CHAIN)
    # e1's events say all of it; e0's events are missing and approx says half: e1
    assert kv_policy({"e1": 10}, {"e0": 10}, degraded=("e0",))(req, es, {}).name == "e1"
    pol = kv_policy({"e1": 4}, {"e0": 20}, degraded=("e0",))
    assert pol.prefix_scores(req, es) == [1.0, 0.4]
    assert pol(req, es, {}).name == "e0"
    # without a token chain (no tokenizer), everyone is scored on the approximate index
    assert kv_policy({"e1": 10}, {"e0": 20}).prefix_scores(
        RouteRequest("m", prefix_chain=CHAIN), es
    ) == [1.0, 0.0]
    assert kv_policy({"e1": 10}).prefix_scores(RouteRequest("m"), es) == [0.0, 0.0]


def test_kv_aware_records_in_approx_and_speculates_briefly():
    clock = FakeClock()
    pol = kv_policy(speculative_ttl_s=2.0, clock=clock)
    req = RouteRequest("m", kv_chain=KV, prefix_chain=CHAIN)
    record_choice(pol, req, "e1")
    assert pol.approx.match(CHAIN) == {"e1": 20}
    assert pol.kv.blocks() == 0  # the event index is the engines' word only
    busier = engines(e0=(0, None), e1=(1, None))
    assert pol(req, busier, {}).name == "e1"  # before any KV event arrives
    clock.now += 1.9
    assert pol(req, busier, {}).name == "e1"
    clock.now += 2.2  # past two TTLs: gone
    assert pol.prefix_scores(RouteRequest("m", kv_chain=KV), busier) == [0.0, 0.0]


def test_kv_aware_speculation_never_removes_what_events_say():
    clock = FakeClock()
    pol = kv_policy({"e0": 10}, speculative_ttl_s=1.0, clock=clock)
    record_choice(pol, RouteRequest("m", kv_chain=KV), "e0")
    clock.now += 5
    es = engines(e0=(0, None), e1=(0, None))
    assert pol.prefix_scores(RouteRequest("m", kv_chain=KV), es) == [1.0, 0.0]


def test_kv_aware_without_speculation_and_for_degraded_engines():
    pol = kv_policy(speculative_ttl_s=0)
    record_choice(pol, RouteRequest("m", kv_chain=KV), "e0")
    es = engines(e0=(0, None), e1=(0, None))
    assert pol.prefix_scores(RouteRequest("m", kv_chain=KV), es) == [0.0, 0.0]
    pol = kv_policy(degraded=("e0",))
    record_choice(pol, RouteRequest("m", kv_chain=KV), "e0")
    assert pol.prefix_scores(RouteRequest("m", kv_chain=KV), engines(e1=(0, None))) == [0.0]


def test_kv_aware_prefill_work_outweighs_a_cache_hit_behind_a_long_queue():
    """Cost = uncached tokens queued there by the policy + the request's own uncached
    tokens there (prompt 160 tokens = the 10-block chain; e0 holds all of it)."""
    clock = FakeClock()
    pol = kv_policy({"e0": 10}, weights=(0, 0, 0), prefill_weight=1.0, clock=clock)
    es = engines(e0=(0, None), e1=(0, None))
    req = RouteRequest("m", kv_chain=KV, prompt_tokens=160)
    assert pol(req, es, {}).name == "e0"  # nothing queued: the cached engine costs 0
    busy = RouteRequest("m", kv_chain=[9, 8, 7], prompt_tokens=5000)  # cached nowhere
    pol(busy, es, {})
    record_choice(pol, busy, "e0")
    assert pol.pending == {"e0": 5000}
    assert pol(req, es, {}).name == "e1"  # 5,000 queued on e0 > its own 160 on e1
    record_started(pol, busy, "e0")  # its first token: e0's queue is empty again
    assert pol.pending == {} and pol(req, es, {}).name == "e0"


def test_kv_aware_prefill_bookkeeping_is_bounded_and_expires():
    clock = FakeClock()
    pol = kv_policy(weights=(0, 0, 0), prefill_weight=1.0, prefill_ttl_s=10, clock=clock)
    es = engines(e0=(0, None), e1=(0, None))
    lost = RouteRequest("m", kv_chain=[1], prompt_tokens=100)
    record_choice(pol, lost, pol(lost, es, {}).name)  # never started: the caller lost it
    assert pol.pending == {"e0": 100}
    retried = RouteRequest("m", kv_chain=[2], prompt_tokens=300)
    first = pol(retried, es, {}).name
    record_choice(pol, retried, first)
    second = pol(retried, es, {}).name
    assert second != first  # the first attempt's work counts against its engine
    record_choice(pol, retried, second)  # a retry: the first attempt's part is gone
    assert pol.pending == {"e0": 400}
    clock.now += 11
    late = RouteRequest("m", kv_chain=[3], prompt_tokens=50)
    record_choice(pol, late, pol(late, es, {}).name)
    assert sum(pol.pending.values()) == 50  # the two older entries expired
    # without a token count (no tokenizer) the scorer stays out of it
    pol(RouteRequest("m", kv_chain=[4]), es, {})
    assert pol._last is None or pol._last[0].prompt_tokens


def test_power_of_two_never_picks_the_most_loaded_of_three():
    pol = PowerOfTwo(random.Random(7))
    es = engines(a=(5, None), b=(1, None), c=(9, None))
    picks = Counter(pol(RouteRequest("m"), es, {}).name for _ in range(300))
    assert set(picks) == {"a", "b"} and picks["b"] > picks["a"]
    two = engines(a=(5, None), b=(1, None))
    assert {pol(RouteRequest("m"), two, {}).name for _ in range(50)} == {"b"}
    assert pol(RouteRequest("m"), two[:1], {}).name == "a"


def sticky(**kw) -> tuple[StickyLeastLoaded, FakeClock]:
    clock = FakeClock()
    return StickyLeastLoaded(clock=clock, **kw), clock


def route(pol, session: str | None, es: list[EngineView], inflight=None) -> str:
    req = RouteRequest("m", session=session)
    name = pol(req, es, inflight or {}).name
    record_choice(pol, req, name)
    return name


def test_sticky_keeps_a_session_on_its_engine():
    pol, _ = sticky()
    assert route(pol, "s", engines(a=(1, None), b=(0, None))) == "b"
    assert route(pol, "s", engines(a=(0, None), b=(2, None))) == "b"  # 2 < 1.25 x 3/2 + 1
    assert route(pol, None, engines(a=(0, None), b=(2, None))) == "a"
    assert len(pol) == 1


@pytest.mark.parametrize(
    ("b_load", "want"),
    [(4, "b"), (5, "a"), (10, "a")],  # cap: 1.25 x (b + 1) / 2 + 1 -> 4.125, 4.75, 7.875
)
def test_sticky_moves_on_overload(b_load, want):
    pol, _ = sticky()
    assert route(pol, "s", engines(a=(1, None), b=(0, None))) == "b"
    assert route(pol, "s", engines(a=(0, None), b=(b_load, None))) == want
    assert pol._sessions["s"][0] == want  # and stays where it moved


def test_sticky_expires_and_follows_engines_leaving():
    pol, clock = sticky(ttl_s=60)
    route(pol, "s", engines(a=(1, None), b=(0, None)))
    clock.now += 59
    assert route(pol, "s", engines(a=(0, None), b=(1, None))) == "b"  # touched
    clock.now += 61
    assert route(pol, "s", engines(a=(0, None), b=(1, None))) == "a"  # expired
    assert route(pol, "s", engines(b=(1, None), c=(3, None))) == "b"  # a is gone


def test_sticky_is_bounded():
    pol, clock = sticky(max_sessions=3, ttl_s=10)
    es = engines(a=(0, None))
    for s in "vwxyz":
        route(pol, s, es)
    assert list(pol._sessions) == ["x", "y", "z"]
    clock.now += 11
    route(pol, "n", es)
    assert list(pol._sessions) == ["n"]  # the expired are swept on the way


def test_make_policy_builds_the_new_policies():
    assert isinstance(make_policy("power_of_two", rng=random.Random(1)), PowerOfTwo)
    sll = make_policy("sticky_least_loaded", load_factor=2.0, ttl_s=5)
    assert isinstance(sll, StickyLeastLoaded) and (sll.load_factor, sll.ttl_s) == (2.0, 5)
    idx = BlockIndex(10)
    pre = make_policy("prefix", prefix_index=idx, cache_threshold=0.3, load_factor=1.25)
    assert isinstance(pre, PrefixAware) and pre.index is idx and pre.cache_threshold == 0.3
    assert isinstance(make_policy("prefix"), PrefixAware)
    kv = make_policy("kv_aware", kv_index=BlockIndex(10), weights=(1, 1, 1))
    assert isinstance(kv, KVAware) and kv.weights == (1, 1, 1)
    assert kv.approx.max_blocks_per_engine == DEFAULT_APPROX_BLOCKS


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("kv_aware", {}),  # no kv_index
        ("prefix", {"nope": 1}),
        ("round_robin", {"cache_threshold": 0.5}),
        ("sticky_least_loaded", {"weights": (1, 1, 1)}),
        ("random_walk", {}),
    ],
)
def test_make_policy_refuses_what_it_cannot_build(name, params):
    with pytest.raises(ValueError, match=name):
        make_policy(name, **params)


def test_record_choice_is_a_no_op_for_stateless_policies():
    record_choice(least_loaded, RouteRequest("m"), "e0")
    record_choice(RoundRobin(), RouteRequest("m"), "e0")
