"""What a request carries for the cache-aware policies, and when kv_aware asks an engine
to tokenize it (only for a prompt whose beginning some engine was sent before)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from gantry.config import RoutingConfig
from gantry.engines.transport import EngineRequest
from gantry.gateway.policies import Policies
from gantry.routing import RouteRequest, record_choice


class _Resp:
    status = 200
    headers: dict[str, str] = {}

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def read(self) -> bytes:
        return self._body

    def close(self) -> None:
        pass


class Tokenizer:
    """An engine that answers /tokenize with one id per character, and counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, request: EngineRequest) -> _Resp:
        self.calls += 1
        body = orjson.loads(request.body or b"{}")
        text = "".join(m["content"] for m in body["messages"])
        return _Resp(orjson.dumps({"tokens": [ord(c) for c in text]}))

    async def aclose(self) -> None:
        pass


def chat(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


def fill(p: Policies, body: dict[str, Any], engine: Tokenizer) -> RouteRequest:
    route = RouteRequest("m")
    asyncio.run(p.fill_chains(route, body, engine))  # type: ignore[arg-type]
    return route


def test_kv_aware_tokenizes_only_prompts_whose_beginning_was_routed():
    p = Policies(RoutingConfig(policy="kv_aware"), degraded=lambda _: False)
    engine = Tokenizer()
    shared = "a system prompt that many requests share, " * 10
    first = fill(p, chat(shared + "first question"), engine)
    # never seen: the approximate chain only, no round trip
    assert first.prefix_chain and first.kv_chain is None and engine.calls == 0
    name, policy = p.for_model("m")
    assert name == "kv_aware"
    record_choice(policy, first, "e0")
    second = fill(p, chat(shared + "second question"), engine)
    assert engine.calls == 1 and second.kv_chain  # seen before: precise chain
    assert len(second.kv_chain) == len(shared + "second question") // 16
    # unrelated prompts are still spared the round trip
    assert fill(p, chat("something else entirely " * 10), engine).kv_chain is None
    assert engine.calls == 1


def test_prefix_policy_never_tokenizes():
    p = Policies(RoutingConfig(policy="prefix"), degraded=lambda _: False)
    engine = Tokenizer()
    route = fill(p, chat("hello " * 50), engine)
    assert route.prefix_chain and route.kv_chain is None and engine.calls == 0
