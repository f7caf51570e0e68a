"""gantry.client in HTTP mode against a real gateway fronting a simulated engine, and
against a bare simulated vLLM endpoint. Retries and idempotency go through a small
loopback proxy that answers 429 or resets the connection on cue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from gantry.client import (
    AsyncClient,
    ContextOverflowError,
    NotFoundError,
    RetryPolicy,
    create_client,
)
from tests.helpers import Proc, gateway, metric_value, sim

HI = [{"role": "user", "content": "Say hello."}]
FIXED = {"seed": 7, "max_tokens": 6, "extra": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def stack(module_tmp: Path) -> Iterator[tuple[Proc, Proc]]:
    tools = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    with sim(module_tmp, "--served-model-name", "qwen", "--speedup", "20", *tools) as engine:
        cfg = module_tmp / "gantry.yaml"
        cfg.write_text(f"engines:\n  - url: {engine.url}\n    name: a\n")
        with gateway(module_tmp, "-c", str(cfg)) as gw:
            yield gw, engine


@pytest.fixture
async def client(stack: tuple[Proc, Proc]) -> AsyncIterator[AsyncClient]:
    async with create_client(stack[0].url, model="qwen") as c:
        yield c


def executions(engine: Proc) -> float:
    """Requests the engine has finished (its own vLLM metric)."""
    return metric_value(httpx.get(engine.url + "/metrics").text, "vllm:request_success_total")


async def test_chat_completion_stream_through_the_gateway(client: AsyncClient) -> None:
    assert client.mode == "http" and "HTTP to" in client.reason
    r = await client.chat(HI, **FIXED)
    assert r.model == "qwen" and r.usage.completion_tokens == 6
    chunks = [c async for c in client.stream_chat(HI, **FIXED)]
    assert "".join(c.text for c in chunks) == r.text  # seeded: the same answer
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    c = await client.complete("Once upon a time", **FIXED)
    assert c.raw["object"] == "text_completion"
    s = client.stats()
    assert (s.requests, s.succeeded, s.ttft_s.count) == (3, 3, 1)
    assert s.completion_tokens == 18


async def test_tools_and_json_mode_over_http(client: AsyncClient) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    r = await client.chat(HI, tools=[tool], tool_choice="required")
    assert r.tool_calls[0].name == "f" and r.finish_reason == "tool_calls"
    j = await client.chat(HI, response_format={"type": "json_object"}, max_tokens=30)
    assert isinstance(j.json(), dict)


async def test_batch_bounded_in_order_with_per_item_errors(stack, client: AsyncClient) -> None:
    _, engine = stack
    prompts = [f"prompt number {i}" for i in range(8)]
    prompts[2] = "word " * 40000  # over the context: refused before sending
    before = executions(engine)
    results = await client.complete_batch(prompts, concurrency=3, **FIXED)
    assert isinstance(results[2], ContextOverflowError)
    for i, r in enumerate(results):
        if i != 2:
            assert not isinstance(r, Exception)
            solo = await client.complete(prompts[i], **FIXED)
            assert r.text == solo.text
    assert executions(engine) - before == 7 + 7  # the overflowing one never ran
    bad = await client.chat_batch([HI, HI], model="nope", max_tokens=2)
    assert all(isinstance(b, NotFoundError) for b in bad)


async def test_direct_to_a_vllm_endpoint(stack) -> None:
    _, engine = stack
    async with create_client(engine.url + "/v1") as c:  # model from /v1/models
        room = await c.context_room("hello")
        assert room > 1000  # max_model_len from the model card
        r = await c.chat(HI, **FIXED)
        assert r.model == "qwen"
        with pytest.raises(NotFoundError, match="embeddings"):
            await c.embed("text")


# -- retries and idempotency ---------------------------------------------------------------
class FaultProxy:
    """Loopback HTTP proxy in front of the gateway, one request per connection. For each
    request it follows its script: ``429`` or ``503`` (answer it with Retry-After), ``reset``
    (forward, let the gateway run it, then reset the client's connection before any
    byte) or ``pass`` (forward and answer). It records what it saw."""

    def __init__(self, upstream: str, script: list[str], retry_after: str = "0") -> None:
        self.upstream, self.script, self.retry_after = upstream, list(script), retry_after
        self.keys: list[str | None] = []
        self.times: list[float] = []
        self.replayed: list[str | None] = []
        self.url = ""

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        self._http = httpx.AsyncClient(base_url=self.upstream)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()
        await self._http.aclose()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        method, path, _ = lines[0].split(" ")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        lower = {k.lower(): v for k, v in headers.items()}
        body = await reader.readexactly(int(lower.get("content-length", 0)))
        if path == "/v1/models":
            action = "pass"
        else:
            action = self.script.pop(0) if self.script else "pass"
            self.keys.append(lower.get("idempotency-key"))
            self.times.append(time.monotonic())
        if action in ("429", "503"):
            msg = b'{"error":{"message":"not now","type":"x","code":' + action.encode() + b"}}"
            writer.write(
                b"HTTP/1.1 "
                + action.encode()
                + b" Not Now\r\nRetry-After: "
                + self.retry_after.encode()
                + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + b"Content-Length: "
                + str(len(msg)).encode()
                + b"\r\n\r\n"
                + msg
            )
            await writer.drain()
            writer.close()
            return
        fwd = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
        r = await self._http.request(method, path, content=body, headers=fwd)
        if path != "/v1/models":
            self.replayed.append(r.headers.get("idempotent-replayed"))
        if action == "reset":  # the gateway ran it; the client hears nothing
            writer.transport.abort()
            return
        out = (
            f"HTTP/1.1 {r.status_code} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(r.content)}\r\nConnection: close\r\n\r\n"
        ).encode()
        writer.write(out + r.content)
        await writer.drain()
        writer.close()


async def test_retried_request_runs_once_at_the_gateway(stack) -> None:
    gw, engine = stack
    async with FaultProxy(gw.url, ["429", "reset", "pass"]) as proxy:
        before = executions(engine)
        policy = RetryPolicy(max_attempts=5, base_s=0.01)
        async with create_client(proxy.url, model="qwen", retry=policy) as c:
            r = await c.chat(HI, **FIXED)
        assert r.usage.completion_tokens == 6
        # one key for all three tries, and the third answer was the gateway's replay
        assert len(proxy.keys) == 3 and len(set(proxy.keys)) == 1 and proxy.keys[0]
        assert proxy.replayed == [None, "true"]
        assert executions(engine) - before == 1  # it ran once
        s = c.stats()
        assert (s.requests, s.succeeded, s.retries) == (1, 1, 2)


async def test_retry_after_is_waited_for(stack) -> None:
    gw, _ = stack
    async with FaultProxy(gw.url, ["429", "pass"], retry_after="1") as proxy:
        async with create_client(proxy.url, model="qwen") as c:
            await c.chat(HI, **FIXED)
        assert proxy.times[1] - proxy.times[0] >= 1.0  # the server asked for a second


async def test_retries_give_up_with_the_error(stack) -> None:
    gw, _ = stack
    async with FaultProxy(gw.url, ["429"] * 3) as proxy:
        policy = RetryPolicy(max_attempts=3, base_s=0.01)
        async with create_client(proxy.url, model="qwen", retry=policy) as c:
            from gantry.client import RateLimitError

            with pytest.raises(RateLimitError) as info:
                await c.chat(HI, **FIXED)
            assert info.value.retry_after == 0
            assert c.stats().errors == {"RateLimitError": 1} and c.stats().retries == 2
        assert len(proxy.keys) == 3


async def test_a_stream_is_retried_before_its_first_chunk(stack) -> None:
    gw, _ = stack
    async with FaultProxy(gw.url, ["503", "pass"]) as proxy:
        policy = RetryPolicy(max_attempts=3, base_s=0.01)
        async with create_client(proxy.url, model="qwen", retry=policy) as c:
            text = "".join([ch.text async for ch in c.stream_chat(HI, **FIXED)])
            assert text == (await c.chat(HI, **FIXED)).text
            s = c.stats()
            assert (s.retries, s.succeeded, s.ttft_s.count) == (1, 2, 1)
        assert proxy.keys[0] == proxy.keys[1]
