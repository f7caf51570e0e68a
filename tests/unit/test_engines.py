from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson
import pytest

from gantry.config import EngineSpec, GatewayConfig, HealthConfig
from gantry.engines import (
    EnginePool,
    EngineRequest,
    EngineResponse,
    EngineTransport,
    EngineView,
    HealthState,
    MemoryResponse,
    MemoryTransport,
    PoolSnapshot,
    mark_down,
    observe,
    parse_metrics,
)
from gantry.errors import GantryError, RetryableEngineError
from gantry.gateway.dispatch import Dispatcher, Outcome
from gantry.observability import GatewayMetrics
from gantry.routing import RouteRequest
from tests.helpers import ManualClock as Clock

KW = dict(failure_threshold=2, success_threshold=2)


@pytest.mark.parametrize(
    ("start", "probes", "healthy"),
    [
        (HealthState(), [True], True),  # first probe decides at once
        (HealthState(), [False], False),
        (HealthState(True, True), [False], True),  # one failure is tolerated
        (HealthState(True, True), [False, False], False),
        (HealthState(True, True), [False, True, False], True),  # not consecutive
        (HealthState(False, True), [True], False),  # needs 2 successes to recover
        (HealthState(False, True), [True, True], True),
    ],
)
def test_health_thresholds(start, probes, healthy):
    s = start
    for ok in probes:
        s = observe(s, ok, **KW)
    assert s.healthy is healthy


def test_mark_down_is_immediate():
    assert not mark_down(HealthState(True, True), "refused").healthy


def test_parse_current_and_old_metric_names():
    text = """# HELP vllm:num_requests_running x
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:num_requests_waiting{engine="1",model_name="m"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 100.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 40.0
"""
    load = parse_metrics(text)
    assert (load.running, load.waiting, load.kv_usage) == (3.0, 3.0, 0.5)
    assert (load.prefix_queries, load.prefix_hits) == (100.0, 40.0)
    old = parse_metrics(
        'vllm:gpu_cache_usage_perc{model_name="m"} 0.25\n'
        'vllm:gpu_prefix_cache_hits_total{model_name="m"} 7\n'
    )
    assert old.kv_usage == 0.25 and old.prefix_hits == 7
    empty = parse_metrics("garbage\nhttp_requests_total 5\n")
    assert empty.running is None and empty.kv_usage is None


# -- the pool, over an in-test transport ------------------------------------------------


class FakeResponse:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.headers: Mapping[str, str] = {}
        self._body = body

    async def read(self) -> bytes:
        return self._body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    async def next_chunk(self) -> bytes | None:
        body, self._body = self._body, b""
        return body or None

    def close(self) -> None:
        pass


class FakeEngine:
    """One engine as the pool sees it: up or down, serving some models, counting GETs."""

    def __init__(self, *models: str, max_model_len: int = 4096) -> None:
        self.up = True
        self.models = list(models)
        self.max_model_len = max_model_len
        self.calls: Counter[str] = Counter()

    async def send(self, request: EngineRequest) -> EngineResponse:
        self.calls[request.path] += 1
        if not self.up:  # worded as a careless transport would: the pool must not echo it
            raise RetryableEngineError(f"{URL} unreachable: Connect call failed {URL}")
        if request.path == "/v1/models":
            data = [{"id": m, "max_model_len": self.max_model_len} for m in self.models]
            return FakeResponse(200, orjson.dumps({"object": "list", "data": data}))
        if request.path == "/health":
            return FakeResponse(200, b"")
        return FakeResponse(404, b"")

    async def aclose(self) -> None:
        pass


URL = "http://10.0.0.5:8000"
CFG = HealthConfig(failure_threshold=1, success_threshold=1, scrape_metrics=False)


def make_pool(engine: FakeEngine, *, models: tuple[str, ...] = (), clock: Clock | None = None):
    spec = EngineSpec(url=URL, name="gpu-1", models=models)
    return EnginePool((spec,), CFG, transport_factory=lambda s: engine, clock=clock or Clock())


async def test_restart_with_another_model_is_noticed(caplog):
    engine = FakeEngine("a")
    pool = make_pool(engine)
    await pool.refresh()
    assert pool.snapshot.models() == ["a"] and engine.calls["/v1/models"] == 1
    for _ in range(3):  # ordinary rounds: /health only
        await pool.refresh()
    assert engine.calls == Counter({"/health": 4, "/v1/models": 1})

    engine.up = False
    await pool.refresh()
    assert pool.snapshot.healthy_for("a") == ()
    engine.models, engine.up = ["b"], True
    with caplog.at_level(logging.WARNING, "gantry.pool"):
        await pool.refresh()
    assert pool.snapshot.models() == ["b"] and pool.models_of("gpu-1") == ("b",)
    assert [e.name for e in pool.snapshot.healthy_for("b")] == ["gpu-1"]
    assert "engine gpu-1 now serves [b], max_model_len 4096 (was [a], max_model_len 4096)" in (
        caplog.text
    )
    await pool.refresh()
    assert engine.calls["/v1/models"] == 2  # read once more, on recovery only
    assert caplog.text.count("now serves") == 1
    await pool.aclose()


async def test_data_path_failure_rereads_models_at_the_next_good_probe():
    engine = FakeEngine("a")
    pool = make_pool(engine)
    await pool.refresh()
    engine.models = ["b"]
    pool.report_down("gpu-1", f"engine gpu-1 unreachable: connection refused ({URL})")
    view = pool.snapshot.engines[0]
    assert not view.healthy and view.reason == "unreachable: connection refused (gpu-1)"
    await pool.refresh()
    assert pool.snapshot.models() == ["b"] and pool.snapshot.engines[0].healthy
    await pool.aclose()


async def test_models_and_max_model_len_are_reread_periodically():
    engine, clock = FakeEngine("a", max_model_len=4096), Clock()
    pool = make_pool(engine, clock=clock)
    await pool.refresh()
    engine.models, engine.max_model_len = ["a", "c"], 8192
    clock.now += CFG.models_refresh_s - 1
    await pool.refresh()
    assert engine.calls["/v1/models"] == 1 and pool.snapshot.models() == ["a"]
    clock.now += 1
    await pool.refresh()
    assert engine.calls["/v1/models"] == 2
    assert pool.snapshot.models() == ["a", "c"]
    assert pool.snapshot.engines[0].max_model_len == 8192
    await pool.aclose()


async def test_configured_models_keep_their_names():
    engine, clock = FakeEngine("served-name", max_model_len=2048), Clock()
    pool = make_pool(engine, models=("public",), clock=clock)
    await pool.refresh()
    engine.max_model_len = 1024
    clock.now += CFG.models_refresh_s
    await pool.refresh()
    view = pool.snapshot.engines[0]
    assert view.models == ("public",) and view.max_model_len == 1024
    await pool.aclose()


async def test_probe_reasons_name_no_address():
    engine = FakeEngine("a")
    engine.up = False
    pool = make_pool(engine)
    await pool.refresh()
    reason = pool.snapshot.engines[0].reason
    assert reason and "10.0.0.5" not in reason and "8000" not in reason, reason
    await pool.aclose()


def test_unnamed_engines_get_their_pool_name_in_the_transport():
    specs = (EngineSpec(url=URL), EngineSpec(url="http://10.0.0.6:8000", transport="aiohttp"))
    pool = EnginePool(specs, CFG)
    names = [pool.transport(n).name for n in ("engine-0", "engine-1")]
    assert names == ["engine-0", "engine-1"]


# -- membership at run time ---------------------------------------------------------------


class Engine(MemoryTransport):
    """An in-memory engine for membership tests: serves ``models``, can be held or down,
    and records whether the pool closed it."""

    def __init__(self, *models: str) -> None:
        super().__init__(self._answer)
        self.models = models
        self.up = True
        self.hold: asyncio.Event | None = None  # set: /health waits for it
        self.closed = False

    async def _answer(self, request: EngineRequest) -> MemoryResponse:
        if request.path == "/health" and self.hold is not None:
            await self.hold.wait()
        await asyncio.sleep(0)  # a real probe yields to the loop
        if not self.up:
            raise RetryableEngineError("engine unreachable: connection refused")
        if request.path == "/health":
            return MemoryResponse(200)
        if request.path == "/v1/models":
            return MemoryResponse.json({"object": "list", "data": [{"id": m} for m in self.models]})
        return MemoryResponse(404)

    def probes(self) -> int:
        return sum(1 for r in self.requests if r.path == "/health")

    async def aclose(self) -> None:
        self.closed = True


class Fleet:
    """Engines by URL, and the transport factory that hands them to the pool."""

    def __init__(self) -> None:
        self.engines: dict[str, Engine] = {}

    def engine(self, name: str, *models: str) -> EngineSpec:
        spec = EngineSpec(url=f"http://{name}.internal:8000", name=name)
        self.engines[name] = Engine(*(models or ("m",)))
        return spec

    def __getitem__(self, name: str) -> Engine:
        return self.engines[name]

    def factory(self, spec: EngineSpec) -> EngineTransport:
        return self.engines[spec.url.removeprefix("http://").split(".")[0]]


def fleet_pool(fleet: Fleet, *names: str, **health: Any) -> EnginePool:
    specs = tuple(fleet.engine(n) for n in names)
    return EnginePool(specs, CFG.model_copy(update=health), transport_factory=fleet.factory)


async def until(predicate: Callable[[], object]) -> None:
    """Yield to the loop until ``predicate()`` holds (the bound is for a slow machine)."""
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 (plain counts and snapshots: nothing signals)
            await asyncio.sleep(0.001)


def routable(pool: EnginePool, model: str = "m") -> list[str]:
    return [e.name for e in pool.snapshot.healthy_for(model)]


def test_snapshot_keeps_draining_engines_listed_but_not_routable():
    views = (
        EngineView("a", "u", ("m",), True),
        EngineView("b", "u", ("m",), True, draining=True),
        EngineView("c", "u", ("m",), False),
    )
    snap = PoolSnapshot.build(1, views)
    assert [e.name for e in snap.healthy_for("m")] == ["a"]
    assert [e.name for e in snap.by_model["m"]] == ["a", "b", "c"]
    assert snap.models() == ["m"]


async def test_add_probes_the_engine_before_it_enters_a_snapshot():
    fleet = Fleet()
    pool = fleet_pool(fleet, "a")
    await pool.refresh()
    spec = fleet.engine("b", "m", "n")
    fleet["b"].hold = asyncio.Event()
    adding = asyncio.create_task(pool.add(spec))
    await until(lambda: fleet["b"].requests)  # its first probe is under way
    assert "b" not in pool.names() and "b" not in [e.name for e in pool.snapshot.engines]
    before = pool.snapshot.version
    fleet["b"].hold.set()
    assert await adding == "b"
    assert pool.snapshot.version == before + 1
    assert routable(pool) == ["a", "b"] and routable(pool, "n") == ["b"]
    assert pool.names() == ("a", "b") and pool.inflight == {"a": 0, "b": 0}
    assert pool.spec_of("b") == spec and pool.models_of("b") == ("m", "n")
    assert [r.path for r in fleet["b"].requests] == ["/health", "/v1/models"]
    await pool.aclose()


async def test_added_engines_get_fresh_names_and_duplicates_are_refused():
    fleet = Fleet()
    fleet.engines["x"] = Engine("m")
    fleet.engines["y"] = Engine("m")
    pool = EnginePool(
        (EngineSpec(url="http://x.internal:8000"), fleet.engine("engine-2")),
        CFG,
        transport_factory=fleet.factory,
    )
    assert pool.names() == ("engine-0", "engine-2")
    unnamed = EngineSpec(url="http://y.internal:8000")
    assert await pool.add(unnamed) == "engine-3"  # engine-2 is taken
    assert pool.spec_of("engine-3").name == "engine-3"
    assert pool.transport("engine-3") is fleet["y"]
    with pytest.raises(GantryError, match="duplicate engine name 'engine-2'"):
        await pool.add(fleet.engine("engine-2"))
    with pytest.raises(KeyError):
        pool.spec_of("nope")
    await pool.aclose()
    with pytest.raises(GantryError, match="closed"):
        await pool.add(unnamed)


async def test_an_unreachable_engine_joins_unhealthy_and_heals():
    fleet = Fleet()
    pool = fleet_pool(fleet, "a")
    await pool.refresh()
    spec = fleet.engine("b")
    fleet["b"].up = False
    await pool.add(spec)
    view = pool.snapshot.engines[1]
    assert view.name == "b" and not view.healthy and "connection refused" in view.reason
    assert routable(pool) == ["a"]
    fleet["b"].up = True
    await pool.refresh()
    assert routable(pool) == ["a", "b"]
    await pool.aclose()


async def test_drain_stops_new_requests_and_undrain_restores_them():
    fleet = Fleet()
    pool = fleet_pool(fleet, "a", "b")
    await pool.refresh()
    version = pool.snapshot.version
    pool.drain("a")
    pool.drain("a")  # again: no change, no new snapshot
    assert pool.snapshot.version == version + 1
    assert routable(pool) == ["b"]
    view = pool.snapshot.engines[0]
    assert view.draining and view.healthy and view.reason == "draining"
    assert [e.name for e in pool.snapshot.by_model["m"]] == ["a", "b"]  # /v1/models unchanged
    assert pool.names() == ("a", "b") and "draining=1" in repr(pool)
    probes = fleet["a"].probes()
    await pool.refresh()
    assert fleet["a"].probes() == probes + 1  # still probed
    fleet["a"].up = False
    await pool.refresh()
    reason = pool.snapshot.engines[0].reason
    assert reason.startswith("draining (") and "connection refused" in reason
    fleet["a"].up = True
    await pool.refresh()
    pool.undrain("a")
    assert routable(pool) == ["a", "b"] and not pool.snapshot.engines[0].draining
    with pytest.raises(KeyError):
        pool.drain("nope")
    with pytest.raises(KeyError):
        pool.undrain("nope")
    await pool.aclose()


async def test_remove_waits_for_requests_in_flight_then_closes():
    fleet = Fleet()
    pool = fleet_pool(fleet, "a", "b")
    await pool.refresh()
    pool.inflight["a"] += 1  # a request in flight, as the dispatcher counts it
    removing = asyncio.create_task(pool.remove("a"))
    await until(lambda: routable(pool) == ["b"])  # no new requests at once
    assert pool.names() == ("a", "b") and pool.snapshot.engines[0].draining
    with pytest.raises(GantryError, match="being removed"):
        pool.undrain("a")
    assert not removing.done() and not fleet["a"].closed
    pool.inflight["a"] -= 1  # the request ends
    await removing
    assert pool.names() == ("b",) and pool.inflight == {"b": 0}
    assert [e.name for e in pool.snapshot.engines] == ["b"] and fleet["a"].closed
    with pytest.raises(KeyError):
        await pool.remove("a")
    with pytest.raises(KeyError):
        pool.transport("a")
    await pool.aclose()


@pytest.mark.parametrize("kw", [{"drain": False}, {"grace_s": 0.01}])
async def test_a_request_outliving_its_engines_removal_is_released_later(kw):
    fleet = Fleet()
    pool = fleet_pool(fleet, "a", "b")
    await pool.refresh()
    pool.inflight["a"] += 2
    await pool.remove("a", **kw)
    assert pool.names() == ("b",) and routable(pool) == ["b"]
    assert pool.inflight == {"a": 2, "b": 0}  # a tombstone, for the dispatcher's release
    assert not fleet["a"].closed  # its open connections keep working
    assert pool.models_of("a") == () and "leaving=1" in repr(pool)
    pool.report_down("a", "refused")  # the data path may still report it: ignored
    again = pool.spec_of("b").model_copy(update={"name": "a"})
    with pytest.raises(GantryError, match="'a' is still in use by a removed engine with 2 request"):
        await pool.add(again)
    pool.inflight["a"] -= 1
    await pool.refresh()
    assert not fleet["a"].closed
    pool.inflight["a"] -= 1
    await pool.refresh()  # the next round closes it and drops the tombstone
    assert fleet["a"].closed and pool.inflight == {"b": 0} and "leaving=0" in repr(pool)
    assert await pool.add(fleet.engine("a")) == "a"  # the name is free again
    assert pool.transport("a") is fleet["a"] and not fleet["a"].closed
    await pool.aclose()


async def test_the_real_dispatcher_releases_an_attempt_after_removal():
    fleet = Fleet()
    pool = fleet_pool(fleet, "a")
    await pool.refresh()
    d = Dispatcher(pool, GatewayMetrics(), GatewayConfig())
    route = RouteRequest("m")
    name = d.choose(route, set(), time.monotonic())
    pool.inflight[name] += 1  # as Dispatcher.open does right after choosing
    await pool.add(fleet.engine("b"))
    await pool.remove("a", drain=False)
    d.release(name, Outcome.OK)
    assert d.choose(route, set(), time.monotonic()) == "b"
    await pool.refresh()
    assert pool.inflight == {"b": 0} and fleet["a"].closed
    await pool.aclose()


async def test_a_cancelled_remove_leaves_the_engine_draining():
    fleet = Fleet()
    pool = fleet_pool(fleet, "a", "b")
    await pool.refresh()
    pool.inflight["a"] += 1
    removing = asyncio.create_task(pool.remove("a"))
    await until(lambda: routable(pool) == ["b"])
    removing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await removing
    assert pool.names() == ("a", "b") and not fleet["a"].closed
    pool.undrain("a")
    assert routable(pool) == ["a", "b"]
    await pool.aclose()


async def test_membership_changes_during_a_probe_round_are_kept():
    fleet = Fleet()
    pool = fleet_pool(fleet, "a", "b", "c")
    await pool.refresh()
    fleet["a"].hold = asyncio.Event()
    round_ = asyncio.create_task(pool.refresh())
    await until(lambda: fleet["a"].probes() == 2)  # the round waits on a
    pool.drain("b")
    removing = asyncio.create_task(pool.remove("c", drain=False))
    await until(lambda: "c" not in pool.names())
    await pool.add(fleet.engine("d"))
    assert not fleet["c"].closed  # not while the round may still be probing it
    fleet["a"].hold.set()
    await round_
    await removing
    assert fleet["c"].closed
    snap = pool.snapshot
    assert [e.name for e in snap.engines] == ["a", "b", "d"]  # c not brought back
    assert routable(pool) == ["a", "d"] and snap.engines[1].draining  # the drain not lost
    await pool.aclose()


async def test_the_probe_loop_runs_through_constant_membership_changes(caplog):
    fleet = Fleet()
    pool = fleet_pool(fleet, "a", interval_s=0.001)
    with caplog.at_level(logging.ERROR, "gantry.pool"):
        async with pool:
            probes = fleet["a"].probes()
            for i in range(200):
                spec = fleet.engine(f"x{i % 3}")
                name = await pool.add(spec)
                pool.inflight[name] += i % 2  # every other one has a request in flight
                pool.drain(name)
                await pool.remove(name, drain=False)
                if i % 2:
                    pool.inflight[name] -= 1
                await until(lambda n=name: n not in pool.inflight)  # reaped by the loop
            await until(lambda: fleet["a"].probes() > probes + 5)
            assert pool.names() == ("a",) and pool.inflight == {"a": 0}
            assert "leaving=0" in repr(pool)
            assert all(e.closed for n, e in fleet.engines.items() if n != "a")
    assert "probe round failed" not in caplog.text
