"""The engine pool and transports against real sockets and real simulator processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from gantry.config import EngineSpec, HealthConfig
from gantry.engines import (
    EnginePool,
    EngineRequest,
    EngineResponse,
    H1Transport,
    HTTPTransport,
)
from gantry.errors import EngineError, EngineTimeout, RetryableEngineError
from gantry.routing import RouteRequest, least_loaded
from tests.helpers import Proc, free_port, gateway, sim

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TRANSPORTS = [H1Transport, HTTPTransport]


@asynccontextmanager
async def tcp_server(handler: Handler) -> AsyncIterator[int]:
    """A loopback server that answers each connection with ``handler``; yields its port."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # accepts, reads, never answers: returns when the client hangs up
    writer.close()


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"this is not HTTP\r\n\r\n")
    await writer.drain()
    await reader.read()
    writer.close()


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def _error_from(transport_cls, port: int, **request: float) -> EngineError:
    url = f"http://127.0.0.1:{port}"
    t = transport_cls(url, name="gpu-1")
    try:
        with pytest.raises(EngineError) as info:
            resp = await t.send(EngineRequest("GET", "/health", **request))
            await resp.read()
    finally:
        await t.aclose()
    return info.value


def assert_names_engine(exc: EngineError, port: int) -> None:
    text = str(exc)
    assert "gpu-1" in text and exc.engine == "gpu-1", text
    assert "127.0.0.1" not in text and str(port) not in text, text
    assert isinstance(exc, RetryableEngineError)


@pytest.mark.parametrize("transport_cls", TRANSPORTS)
async def test_connection_refused_names_the_engine_not_its_address(transport_cls):
    port = free_port()  # bound and released: nothing listens there
    exc = await _error_from(transport_cls, port)
    assert_names_engine(exc, port)
    assert str(exc) == "engine gpu-1 unreachable: connection refused"


@pytest.mark.parametrize("transport_cls", TRANSPORTS)
async def test_no_answer_times_out_naming_the_engine(transport_cls):
    async with tcp_server(_silent) as port:
        exc = await _error_from(transport_cls, port, read_timeout=0.2)
    assert_names_engine(exc, port)
    assert isinstance(exc, EngineTimeout)


@pytest.mark.parametrize("handler", [_garbage, _hang_up])
@pytest.mark.parametrize("transport_cls", TRANSPORTS)
async def test_bad_answers_name_the_engine(transport_cls, handler):
    async with tcp_server(handler) as port:
        exc = await _error_from(transport_cls, port, read_timeout=5.0)
    assert_names_engine(exc, port)


async def test_h1_connect_timeout_names_the_engine():
    async with tcp_server(_silent) as port:
        exc = await _error_from(H1Transport, port, connect_timeout=0)
    assert_names_engine(exc, port)
    assert isinstance(exc, EngineTimeout)


async def test_dead_engine_reason_has_no_address():
    port = free_port()
    spec = EngineSpec(url=f"http://127.0.0.1:{port}", name="gpu-1", models=("m",))
    async with EnginePool((spec,), HealthConfig(timeout_s=1.0)) as pool:
        view = pool.snapshot.engines[0]
    assert not view.healthy
    assert view.reason == "unreachable: connection refused"


def _poll(url: str, check: Callable[[httpx.Response], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=2.0)
            if check(last):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url}: condition not met; last answer {last and last.text}")


def _model_ids(r: httpx.Response) -> set[str]:
    return {c["id"] for c in r.json()["data"]} if r.status_code == 200 else set()


def test_gateway_follows_an_engine_restarted_with_another_model(tmp_path):
    port = free_port()
    env = {"GANTRY_HEALTH__INTERVAL_S": "0.2", "GANTRY_HEALTH__TIMEOUT_S": "1"}
    with (
        sim(tmp_path, "--served-model-name", "a", port=port) as engine,
        gateway(tmp_path, "--engine", engine.url, env=env) as gw,
    ):
        assert _model_ids(httpx.get(gw.url + "/v1/models")) == {"a"}
        engine.stop()
        # The engine is gone: /readyz (public) says why without naming its address.
        _poll(gw.url + "/readyz", lambda r: r.status_code == 503)
        reasons = httpx.get(gw.url + "/readyz").text
        assert "engine-0" in reasons and "127.0.0.1" not in reasons and str(port) not in reasons
        with sim(tmp_path, "--served-model-name", "b", port=port):
            _poll(gw.url + "/v1/models", lambda r: _model_ids(r) == {"b"})
            r = httpx.post(
                gw.url + "/v1/completions",
                json={"model": "b", "prompt": "x", "max_tokens": 2},
                timeout=30,
            )
            assert r.status_code == 200, r.text


# -- membership at run time, against simulator processes ----------------------------------

FAST = HealthConfig(interval_s=0.1, timeout_s=2.0)


@pytest.fixture(scope="module")
def two_sims(module_tmp: Path) -> Iterator[tuple[Proc, Proc]]:
    args = ("--served-model-name", "m", "--speedup", "4")
    with sim(module_tmp, *args) as a, sim(module_tmp, *args) as b:
        yield a, b


def _sim_metric(engine: Proc, prefix: str) -> float:
    text = httpx.get(engine.url + "/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def completed(engine: Proc) -> float:
    """Requests the simulator has finished, from its own /metrics."""
    return _sim_metric(engine, "vllm:request_success_total{")


def running(engine: Proc) -> float:
    return _sim_metric(engine, "vllm:num_requests_running{")


async def until(predicate: Callable[[], object]) -> None:
    async with asyncio.timeout(30):  # a bound for a slow machine, not a pace
        while not predicate():  # noqa: ASYNC110 (plain counts and snapshots: nothing signals)
            await asyncio.sleep(0.005)


def completion(max_tokens: int, *, stream: bool = False) -> EngineRequest:
    body = {"model": "m", "prompt": "hi", "max_tokens": max_tokens, "ignore_eos": True}
    return EngineRequest(
        "POST",
        "/v1/completions",
        orjson.dumps({**body, "stream": stream}),
        {"content-type": "application/json"},
        read_timeout=30.0,
    )


async def open_on(pool: EnginePool, request: EngineRequest) -> tuple[str, EngineResponse]:
    """One request routed as the gateway's dispatcher does: choose from the current
    snapshot, count it in flight, send. The caller releases ``inflight`` when done."""
    name = least_loaded(RouteRequest("m"), pool.snapshot.healthy_for("m"), pool.inflight).name
    pool.inflight[name] += 1
    try:
        resp = await pool.transport(name).send(request)
    except BaseException:
        pool.inflight[name] -= 1
        raise
    return name, resp


async def short_request(pool: EnginePool) -> str:
    name, resp = await open_on(pool, completion(2))
    try:
        assert resp.status == 200 and orjson.loads(await resp.read())["choices"]
    finally:
        pool.inflight[name] -= 1
    return name


async def rest_of(resp: EngineResponse) -> bytes:
    parts = []
    while (piece := await resp.next_chunk()) is not None:
        parts.append(piece)
    resp.close()
    return b"".join(parts)


async def test_an_engine_added_to_a_running_pool_takes_requests(two_sims):
    a, b = two_sims
    done_b = completed(b)
    async with EnginePool((EngineSpec(url=a.url, name="a"),), FAST) as pool:
        assert await pool.add(EngineSpec(url=b.url, name="b")) == "b"
        assert [e.name for e in pool.snapshot.healthy_for("m")] == ["a", "b"]
        first, s1 = await open_on(pool, completion(20, stream=True))
        second, s2 = await open_on(pool, completion(20, stream=True))  # the less loaded one
        assert {first, second} == {"a", "b"}
        for name, resp in ((first, s1), (second, s2)):
            assert (await rest_of(resp)).endswith(b"data: [DONE]\n\n")
            pool.inflight[name] -= 1
    assert completed(b) == done_b + 1


@pytest.mark.parametrize("transport", ["h1", "aiohttp"])
@pytest.mark.parametrize("drain", [True, False])
async def test_removing_an_engine_lets_its_stream_finish(two_sims, drain, transport):
    a, b = two_sims
    done_a, done_b = completed(a), completed(b)
    specs = (
        EngineSpec(url=a.url, name="a", transport=transport),
        EngineSpec(url=b.url, name="b", transport=transport),
    )
    async with EnginePool(specs, FAST) as pool:
        pool.inflight["a"] += 1  # the long stream goes to a
        resp = await pool.transport("a").send(completion(200, stream=True))
        first = await resp.next_chunk()
        assert resp.status == 200 and first
        removing = asyncio.create_task(pool.remove("a", drain=drain))
        await until(lambda: [e.name for e in pool.snapshot.healthy_for("m")] == ["b"])
        assert running(a) == 1  # out of routing while its stream is still being generated
        assert [await short_request(pool) for _ in range(3)] == ["b", "b", "b"]
        assert removing.done() is not drain  # drain: waits for the stream
        rest = await rest_of(resp)
        assert rest.endswith(b"data: [DONE]\n\n") and rest.count(b"data: ") > 100
        pool.inflight["a"] -= 1  # as the dispatcher releases it
        await removing
        await until(lambda: "a" not in pool.inflight)  # tombstone reaped (drain=False)
        assert pool.names() == ("b",)
    assert completed(a) == done_a + 1  # the stream only: nothing new went to a
    assert completed(b) == done_b + 3
