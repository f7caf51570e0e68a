from __future__ import annotations

from collections import Counter

from gantry.routing import (
    EngineView,
    PoolSnapshot,
    RoundRobin,
    RouteRequest,
    SessionAffinity,
    least_loaded,
    make_policy,
)


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
