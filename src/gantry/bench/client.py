"""Send one benchmark job and time it the way `vllm bench serve` does."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from gantry.bench.datasets import Job, Turn
from gantry.bench.stats import RequestResult
from gantry.engines.transport import EngineRequest, EngineTransport
from gantry.errors import GantryError
from gantry.protocol import SSEDecoder, usage_of, usage_of_body

_CHAT = "/v1/chat/completions"
_COMPLETIONS = "/v1/completions"


@dataclass(frozen=True, slots=True)
class Target:
    model: str
    chat: bool = True
    stream: bool = True
    ignore_eos: bool = True
    extra_body: dict[str, Any] = field(default_factory=dict)
    session_header: str = "x-session-id"
    timeout_s: float = 600.0

    @property
    def path(self) -> str:
        return _CHAT if self.chat else _COMPLETIONS


def build_body(t: Target, turn: Turn, job: Job, history: list[dict[str, Any]]) -> bytes:
    body: dict[str, Any] = {
        "model": t.model,
        "max_tokens": turn.output_len,
        "stream": t.stream,
        **t.extra_body,
    }
    if t.ignore_eos:
        body["ignore_eos"] = True
    if t.stream:
        body["stream_options"] = {"include_usage": True}
    if t.chat:
        if turn.messages is not None:
            body["messages"] = list(turn.messages)
        else:
            msgs = [{"role": "system", "content": job.system}] if job.system else []
            body["messages"] = [*msgs, *history, {"role": "user", "content": turn.text}]
    else:
        prior = "".join(f"{m['content']}\n" for m in history)
        body["prompt"] = (f"{job.system}\n" if job.system else "") + prior + turn.text
    return orjson.dumps(body)


async def run_job(
    transport: EngineTransport,
    t: Target,
    job: Job,
    t0: float,
    headers: dict[str, str],
    *,
    think_s: float = 0.0,
) -> list[RequestResult]:
    """All turns of a job in order, ``think_s`` apart (a user reading the reply);
    a failed turn ends the conversation."""
    history: list[dict[str, Any]] = []
    hdrs = dict(headers)
    if job.session:
        hdrs[t.session_header] = job.session
    out = []
    for i, turn in enumerate(job.turns):
        if i and think_s > 0:
            await asyncio.sleep(think_s)
        res, reply = await _one(
            transport, t, build_body(t, turn, job, history), t0, hdrs, want_text=len(job.turns) > 1
        )
        out.append(res)
        if not res.ok:
            break
        history += [{"role": "user", "content": turn.text}, {"role": "assistant", "content": reply}]
    return out


async def _one(
    transport: EngineTransport,
    t: Target,
    body: bytes,
    t0: float,
    headers: dict[str, str],
    *,
    want_text: bool,
) -> tuple[RequestResult, str]:
    start = time.perf_counter()
    res = RequestResult(start=start - t0)
    text: list[str] = []
    try:
        resp = await transport.send(
            EngineRequest(
                "POST", t.path, body, headers, connect_timeout=30, read_timeout=t.timeout_s
            )
        )
    except GantryError as exc:
        res.error = type(exc).__name__
        return res, ""
    res.status = resp.status
    try:
        if resp.status != 200:
            await resp.read()
            return res, ""
        if not t.stream:
            data = await resp.read()
            now = time.perf_counter()
            res.ttft = res.e2el = now - start
            u = usage_of_body(data)
            if u is not None:
                res.prompt_tokens, res.output_tokens = u.prompt_tokens, u.completion_tokens
            res.chunk_times = [now - t0] * res.output_tokens
            res.ok = True
            return res, ""
        await _read_stream(resp, t, res, start, t0, text if want_text else None)
    except (GantryError, ValueError, OSError) as exc:
        res.error = type(exc).__name__
        res.ok = False
    finally:
        resp.close()
    return res, "".join(text)


async def _read_stream(
    resp: Any, t: Target, res: RequestResult, start: float, t0: float, text: list[str] | None
) -> None:
    decoder = SSEDecoder()
    last = 0.0
    tokens = 0
    async for chunk in resp.iter_chunks():
        now = time.perf_counter()
        for data in decoder.feed(chunk):
            if not data.startswith(b"{"):
                continue  # [DONE]
            if b'"usage"' in data:
                u = usage_of(orjson.loads(data))
                if u is not None:
                    res.prompt_tokens, res.output_tokens = u.prompt_tokens, u.completion_tokens
                if b'"choices":[]' in data or b'"choices": []' in data:
                    continue
            if data.startswith(b'{"error"'):
                res.error = "stream error"
                return
            if t.chat and b'"role"' in data and b'"content":""' in data:
                continue  # the role-only first chunk does not count (as vllm bench)
            if not res.ttft:
                res.ttft = now - start
            else:
                res.itls.append(now - last)
            last = now
            tokens += 1
            res.chunk_times.append(now - t0)
            if text is not None:
                text.append(_delta_text(data, t.chat))
    if tokens:
        res.e2el = last - start
        res.ok = True
        if not res.output_tokens:
            res.output_tokens = tokens  # no usage from the server: count chunks


def _delta_text(data: bytes, chat: bool) -> str:
    try:
        choice = orjson.loads(data)["choices"][0]
    except (ValueError, KeyError, IndexError):
        return ""
    return (
        str((choice.get("delta") or {}).get("content") or "")
        if chat
        else str(choice.get("text") or "")
    )
