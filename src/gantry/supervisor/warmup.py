"""Warm-up and validation of an engine before it is called ready.

1. ``/v1/models`` serves the expected model name (the model card);
2. completions of growing prompt size (streamed; time to first token recorded), which
   also exercise the prefill paths and CUDA graphs a cold engine compiles on first use;
3. at temperature 0 a chat answer is not empty.

All I/O goes through an ``EngineTransport``; the checks return a result, they do not raise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from gantry.engines.transport import EngineRequest, EngineTransport
from gantry.errors import GantryError


@dataclass(frozen=True, slots=True)
class WarmupResult:
    ok: bool
    reason: str = ""
    ttft: tuple[tuple[int, float], ...] = ()  # (prompt tokens, seconds)
    answer: str = ""


def warmup_sizes(sizes: tuple[int, ...], max_model_len: int, max_tokens: int) -> tuple[int, ...]:
    """The prompt sizes that fit the context (at least the smallest one, shrunk)."""
    room = max(1, max_model_len - max_tokens - 8)
    fitting = tuple(s for s in sizes if s <= room)
    return fitting or (min(min(sizes, default=16), room),)


def _prompt(tokens: int) -> str:
    # ~1 token per short common word for BPE tokenizers and the simulator's alike
    words = ("the", "engine", "is", "warming", "up", "and", "this", "text")
    return " ".join(words[i % len(words)] for i in range(tokens))


async def _json(t: EngineTransport, method: str, path: str, body: object, wait_s: float) -> object:
    data = None if body is None else orjson.dumps(body)
    headers = {"Content-Type": "application/json"} if data else None
    resp = await t.send(
        EngineRequest(method, path, data, headers, connect_timeout=5, read_timeout=wait_s)
    )
    raw = await resp.read()
    if resp.status != 200:
        raise ValueError(f"{path} answered {resp.status}: {raw[:200].decode(errors='replace')}")
    return orjson.loads(raw)


async def _ttft(
    t: EngineTransport, model: str, tokens: int, max_tokens: int, wait_s: float
) -> float:
    body = {
        "model": model,
        "prompt": _prompt(tokens),
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    resp = await t.send(
        EngineRequest(
            "POST",
            "/v1/completions",
            orjson.dumps(body),
            {"Content-Type": "application/json"},
            connect_timeout=5,
            read_timeout=wait_s,
        )
    )
    if resp.status != 200:
        raw = await resp.read()
        raise ValueError(f"a {tokens}-token prompt answered {resp.status}: {raw[:200]!r}")
    first: float | None = None
    try:
        async for chunk in resp.iter_chunks():
            if first is None and b'"text"' in chunk:
                first = time.perf_counter() - start
    finally:
        resp.close()
    if first is None:
        raise ValueError(f"a {tokens}-token prompt streamed no token")
    return first


async def warm_up(
    transport: EngineTransport,
    served_name: str,
    *,
    sizes: tuple[int, ...],
    max_tokens: int,
    timeout_s: float,
) -> WarmupResult:
    try:
        cards = await _json(transport, "GET", "/v1/models", None, timeout_s)
        ids = [c.get("id") for c in cards.get("data", [])] if isinstance(cards, dict) else []
        if served_name not in ids:
            return WarmupResult(False, f"model card mismatch: serves {ids}, not {served_name!r}")
        ttft = []
        for n in sizes:
            ttft.append((n, await _ttft(transport, served_name, n, max_tokens, timeout_s)))
        answer = await _json(
            transport,
            "POST",
            "/v1/chat/completions",
            {
                "model": served_name,
                "messages": [{"role": "user", "content": "Say hello."}],
                "temperature": 0,
                "max_tokens": 16,
            },
            timeout_s,
        )
        text = _content(answer)
        if not text.strip():
            return WarmupResult(False, "empty answer at temperature 0", tuple(ttft))
        return WarmupResult(True, "", tuple(ttft), text)
    except (GantryError, ValueError, TimeoutError, OSError) as exc:
        return WarmupResult(False, f"warm-up failed: {exc}")


def _content(answer: object) -> str:
    try:
        return str(answer["choices"][0]["message"]["content"] or "")  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return ""


__all__ = ["WarmupResult", "warm_up", "warmup_sizes"]
