"""gantry.client in simulator mode: the simulator's engine core in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gantry.client import (
    AsyncClient,
    Client,
    ContextOverflowError,
    NotFoundError,
    UnsupportedError,
    create_client,
)
from gantry.sim import SimSettings

FAST = SimSettings(
    served_model_names=("qwen",),
    instant=True,
    max_model_len=4096,
    enable_auto_tool_choice=True,
    tool_call_parser="hermes",
)
HI = [{"role": "user", "content": "Say hello."}]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        },
    },
}


@pytest.fixture
async def client() -> AsyncIterator[AsyncClient]:
    async with create_client(mode="sim", sim=FAST) as c:
        yield c


async def test_mode_and_reason(client: AsyncClient) -> None:
    assert client.mode == "sim"
    assert "simulator" in client.reason


async def test_chat_and_completion(client: AsyncClient) -> None:
    r = await client.chat(HI, max_tokens=12, extra={"ignore_eos": True})
    assert r.model == "qwen" and r.finish_reason == "length"
    assert r.usage.completion_tokens == 12 and r.text
    # the prompt's tokens are exactly what the engine's tokenizer counts
    assert r.usage.prompt_tokens == client.count_tokens(HI)
    c = await client.complete("Once upon a time", max_tokens=5, extra={"ignore_eos": True})
    assert c.raw["object"] == "text_completion" and c.usage.completion_tokens == 5


async def test_stream_matches_the_whole_answer(client: AsyncClient) -> None:
    opts = {"max_tokens": 20, "seed": 5, "temperature": 0.0, "extra": {"ignore_eos": True}}
    whole = await client.chat(HI, **opts)
    chunks = [c async for c in client.stream_chat(HI, **opts)]
    assert "".join(c.text for c in chunks) == whole.text
    assert chunks[-2].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20


async def test_seed_and_temperature_zero_are_reproducible(client: AsyncClient) -> None:
    answers = {
        (await client.chat(HI, seed=42, temperature=0, max_tokens=24)).text for _ in range(3)
    }
    assert len(answers) == 1
    other = await client.chat(HI, seed=43, temperature=0, max_tokens=24)
    assert other.text not in answers  # the seed is what fixes the answer


async def test_tools_and_json_mode(client: AsyncClient) -> None:
    r = await client.chat(HI, tools=[TOOL], tool_choice="required", seed=3)
    (call,) = r.tool_calls
    assert call.name == "get_weather" and r.finish_reason == "tool_calls"
    assert set(call.parsed_arguments()) == {"city", "days"}
    stream = client.stream_chat(HI, tools=[TOOL], tool_choice="required", seed=3)
    chunks = [c async for c in stream]
    assert chunks[0].tool_name == "get_weather"
    assert "".join(c.text for c in chunks) == call.arguments  # same seed, same call
    j = await client.chat(HI, response_format={"type": "json_object"}, max_tokens=40)
    assert isinstance(j.json(), dict)


async def test_batch_keeps_order_and_per_item_errors(client: AsyncClient) -> None:
    too_long = [{"role": "user", "content": "word " * 5000}]
    convos = [[{"role": "user", "content": f"item {i}"}] for i in range(6)]
    convos.insert(3, too_long)
    results = await client.chat_batch(convos, max_tokens=4, seed=1, temperature=0)
    assert len(results) == 7
    err = results[3]
    assert isinstance(err, ContextOverflowError) and err.context_length == 4096
    for i, r in enumerate(results):
        if i == 3:
            continue
        assert not isinstance(r, Exception)
        expected = await client.chat(convos[i], max_tokens=4, seed=1, temperature=0)
        assert r.text == expected.text  # the answer in slot i is the answer to item i


async def test_overflow_is_refused_before_the_engine(client: AsyncClient) -> None:
    long_text = "word " * 1500
    room = await client.context_room(long_text)
    assert 0 < room < 4096
    with pytest.raises(ContextOverflowError) as info:
        await client.complete(long_text, max_tokens=room + 1)
    assert info.value.max_tokens == room + 1 and info.value.context_length == 4096
    assert client.backend._engine.metrics.req_prompt_tokens_l._sum.get() == 0  # type: ignore[attr-defined]


async def test_errors_from_the_engine_and_embeddings(client: AsyncClient) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        await client.chat(HI, model="no-such-model")
    with pytest.raises(UnsupportedError, match="embeddings"):
        await client.embed("text")
    s = client.stats()
    assert s.errors == {"NotFoundError": 1, "UnsupportedError": 1}


async def test_stats(client: AsyncClient) -> None:
    await client.chat(HI, max_tokens=3, extra={"ignore_eos": True})
    _ = [c async for c in client.stream_chat(HI, max_tokens=4, extra={"ignore_eos": True})]
    s = client.stats()
    assert (s.requests, s.succeeded, s.failed, s.retries) == (2, 2, 0, 0)
    assert s.completion_tokens == 7
    assert s.ttft_s.count == 1 and s.e2e_s.count == 2
    assert s.e2e_s.p50 is not None and s.ttft_s.p50 is not None


def test_sync_client() -> None:
    with Client(mode="sim", sim=FAST, defaults={"temperature": 0, "seed": 42}) as c:
        a = c.chat(HI, max_tokens=8)
        b = c.chat(HI, max_tokens=8)
        assert a.text == b.text  # defaults applied to every request
        assert "".join(ch.text for ch in c.stream_chat(HI, max_tokens=8)) == a.text
        results = c.complete_batch(["one", "two", "three"], max_tokens=2)
        assert [type(r).__name__ for r in results] == ["Completion"] * 3
        assert c.stats().requests == 6
