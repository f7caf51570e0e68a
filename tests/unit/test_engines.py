from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Mapping

import orjson
import pytest

from gantry.config import EngineSpec, HealthConfig
from gantry.engines import (
    EnginePool,
    EngineRequest,
    EngineResponse,
    HealthState,
    mark_down,
    observe,
    parse_metrics,
)
from gantry.errors import RetryableEngineError

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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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
