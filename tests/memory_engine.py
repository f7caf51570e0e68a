"""In-memory engines and a gateway over them, for fast pipeline tests (no processes).

``FakeEngine`` answers like vLLM: ``/health``, ``/v1/models``, ``/metrics`` and
completions, with a scripted behaviour per request (``ok``, ``503``, ``refuse``...).
``MemoryGateway`` builds a ``Gateway`` over such engines and sends requests through
``Gateway.handle`` with in-memory exchanges.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from gantry.config import load_config
from gantry.engines import MemoryResponse, MemoryTransport
from gantry.engines.transport import EngineRequest
from gantry.errors import RetryableEngineError
from gantry.gateway import Gateway
from gantry.gateway.http import MemoryConnection
from gantry.gateway.pipeline import SECURITY_HEADERS
from gantry.observability import GatewayMetrics, RequestLog


def chunk(model: str, content: str | None, *, role: bool = False, pretty: bool = False) -> bytes:
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {"content": content}
    obj = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    return _sse(obj, pretty)


def usage_chunk(model: str, *, pretty: bool = False) -> bytes:
    obj = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    return _sse(obj, pretty)


def _sse(obj: Any, pretty: bool) -> bytes:
    data = orjson.dumps(obj, option=orjson.OPT_INDENT_2 if pretty else 0)
    if pretty:
        data = data.replace(b'":', b'" :').replace(b"\n", b" ")
    return b"data: " + data + b"\n\n"


DONE = b"data: [DONE]\n\n"


class FakeEngine:
    """One engine. ``script`` holds behaviours for the next requests (then ``default``)."""

    def __init__(
        self,
        name: str,
        models: tuple[str, ...] = ("m",),
        *,
        default: str = "ok",
        pretty: bool = False,
        kv_usage: float | None = None,
    ) -> None:
        self.name = name
        self.models = models
        self.default = default
        self.script: list[str] = []
        self.pretty = pretty
        self.kv_usage = kv_usage
        self.healthy = True
        self.served = 0  # completion requests answered
        self.gate: asyncio.Event | None = None  # when set: completions wait for it
        self.entered = asyncio.Event()  # a completion request arrived
        self.transport = MemoryTransport(self.handle)

    async def handle(self, req: EngineRequest) -> MemoryResponse:
        if req.path == "/health":
            return MemoryResponse(200 if self.healthy else 503, b"")
        if req.path == "/v1/models":
            return MemoryResponse.json(
                {"data": [{"id": m, "max_model_len": 4096} for m in self.models]}
            )
        if req.path == "/metrics":
            if self.kv_usage is None:
                return MemoryResponse(404, b"")
            return MemoryResponse(200, f"vllm:kv_cache_usage_perc {self.kv_usage}\n".encode())
        how = self.script.pop(0) if self.script else self.default
        body = orjson.loads(req.body or b"{}")
        model = body.get("model", self.models[0])
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if how == "refuse":
            raise RetryableEngineError(f"engine {self.name} unreachable: connection refused")
        if how.isdigit():
            return MemoryResponse.json(
                {"error": {"message": f"status {how}", "type": "x", "code": int(how)}}, int(how)
            )
        self.served += 1
        if body.get("stream"):
            return MemoryResponse.sse(self._stream(model, how))
        if how == "cut":
            return MemoryResponse(200, chunks=self._cut_body())
        return MemoryResponse(
            200, self._answer(model), headers={"content-type": "application/json"}
        )

    def _answer(self, model: str) -> bytes:
        obj = {
            "id": "x",
            "object": "chat.completion",
            "model": model,
            "engine": self.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }
        return orjson.dumps(obj, option=orjson.OPT_INDENT_2 if self.pretty else 0)

    async def _cut_body(self) -> AsyncIterator[bytes]:
        yield b'{"id": "x", "choi'
        raise ConnectionResetError("engine died mid-answer")

    async def _stream(self, model: str, how: str) -> AsyncIterator[bytes]:
        p = self.pretty
        yield chunk(model, None, role=True, pretty=p)
        if how == "fail_before_token":
            raise ConnectionResetError("engine died before the first token")
        yield chunk(model, f"from-{self.name}", pretty=p)
        if how == "fail_after_token":
            raise ConnectionResetError("engine died mid-stream")
        yield chunk(model, "!", pretty=p) + usage_chunk(model, pretty=p) + DONE


class MemoryGateway:
    """A gateway over in-memory engines; ``send()`` returns (status, headers, body)."""

    def __init__(
        self,
        tmp: Path,
        engines: list[FakeEngine],
        *,
        engine_groups: dict[str, str] | None = None,
        **config: Any,
    ) -> None:
        self.engines = {e.name: e for e in engines}
        env = {"GANTRY_SECURITY__DATABASE_URL": f"sqlite:///{tmp}/gw.db"}
        groups = engine_groups or {}
        overrides: dict[str, Any] = {
            "engines": [
                {"url": f"http://{e.name}", "name": e.name, "group": groups.get(e.name)}
                for e in engines
            ],
            "security": {"auth": "off"},
            "health": {"interval_s": 3600},  # tests refresh the pool themselves
        }
        for k, v in config.items():
            overrides[k] = {**overrides[k], **v} if isinstance(v, dict) and k in overrides else v
        self.cfg = load_config(env=env, overrides=overrides)
        self.log_sink = io.BytesIO()
        self.metrics = GatewayMetrics()
        self.gw = Gateway(
            self.cfg,
            metrics=self.metrics,
            transport_factory=lambda spec: self.engines[str(spec.name)].transport,
            request_log=RequestLog(self.log_sink),
        )

    async def __aenter__(self) -> MemoryGateway:
        await self.gw.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.gw.__aexit__(*exc)

    async def send(
        self,
        path: str,
        body: Any = None,
        *,
        method: str = "POST",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = MemoryConnection(SECURITY_HEADERS)
        h = {b"content-type": "application/json"}
        for k, v in (headers or {}).items():
            h[k.lower().encode()] = v
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else b"")
        x = conn.exchange(method, path, h, data)
        await self.gw.handle(x)
        return conn.response()

    def log_lines(self) -> list[dict[str, Any]]:
        assert self.gw.accounting.log is not None
        self.gw.accounting.log.flush()
        return [orjson.loads(line) for line in self.log_sink.getvalue().splitlines()]

    def requests_total(self, **labels: str) -> float:
        total = 0.0
        for fam in self.metrics.registry.collect():
            for s in fam.samples:
                if s.name == "gantry_requests_total" and all(
                    s.labels.get(k) == v for k, v in labels.items()
                ):
                    total += s.value
        return total


def chat(model: str = "m", *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        **extra,
    }
