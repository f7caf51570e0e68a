"""In-process mode on the simulator's engine core: no HTTP, no server.

The same pieces ``gantry sim`` serves with (settings, tokenizer, request validation,
the engine loop and the response shapes), driven directly. Requests added in the same
loop turn are scheduled in the same engine step: that is native batching.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from gantry.client._errors import ModeUnavailableError, UnsupportedError, error_for_status
from gantry.client._tokens import EngineTokenizerCounter, TokenCounter
from gantry.client._types import Chunk, Completion, Embedding, Request, Usage, parse_completion
from gantry.sim.engine import RequestStream, SimEngine, merge_streams
from gantry.sim.frontend import frontend
from gantry.sim.metrics import SimMetrics
from gantry.sim.responses import chat_body, completion_body, random_id
from gantry.sim.sequence import SimRequest
from gantry.sim.settings import SimConfigError, SimSettings
from gantry.sim.validate import VLLMError, Work, parse


class SimBackend:
    mode = "sim"

    def __init__(self, settings: SimSettings | None = None) -> None:
        self.settings = settings or SimSettings()
        try:
            self._r = self.settings.resolve()
        except SimConfigError as exc:
            raise ModeUnavailableError(f"simulator settings: {exc}") from None
        self._front = frontend(self._r)
        self._tok = self._front.tokenizer
        self._rng = random.Random(self.settings.seed)
        self._engine: SimEngine | None = None
        self.batch_concurrency = self._r.scheduler.max_num_seqs

    async def start(self) -> None:
        r = self._r
        engine = SimEngine(
            r.engine_config(),
            r.latency_model(),
            SimMetrics(r.served[0], r.max_model_len, "0"),
        )
        self._engine = await engine.__aenter__()

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.stop()
            self._engine = None

    def _work(self, req: Request) -> Work:
        try:
            return parse(
                req.body,
                chat=req.chat,
                served=self._r.served,
                tok=self._tok,
                max_model_len=self._r.max_model_len,
                request_seed=self._rng.getrandbits(32),
                server=self._front.options,
            )
        except VLLMError as err:
            raise error_for_status(err.status, err.message, None) from None

    def _add(self, work: Work, rid: str) -> list[RequestStream]:
        assert self._engine is not None, "start() first"
        now = time.monotonic()
        streams = []
        for p_idx, ids in enumerate(work.prompts):
            for i in range(work.n):
                sim_req = SimRequest(
                    request_id=f"{rid}-{p_idx}",
                    prompt_token_ids=ids,
                    sampling=work.sampling[p_idx],
                    tokenizer=self._tok,
                    arrival=now,
                    cache_salt=work.cache_salt,
                    index=p_idx * work.n + i,
                )
                streams.append(self._engine.add(sim_req))
        return streams

    def _abort(self, streams: list[RequestStream]) -> None:
        if self._engine is not None:
            for s in streams:
                if not s.closed:
                    self._engine.abort(s)

    async def complete(self, req: Request, idempotency_key: str) -> Completion:
        work = self._work(req)
        rid = ("chatcmpl-" if req.chat else "cmpl-") + random_id()
        streams = self._add(work, rid)
        try:
            choices = [await _collect(s, work) for s in streams]
        finally:
            self._abort(streams)
        prompt = sum(len(p) for p in work.prompts)
        completion = sum(len(s.req.output_token_ids) for s in streams)
        kw: dict[str, Any] = dict(
            rid=rid,
            created=int(time.time()),
            model=work.model,
            fingerprint=self._r.fingerprint,
            choices=choices,
            usage_={
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        )
        body = chat_body(**kw, tool=work.tool) if req.chat else completion_body(**kw)
        return parse_completion(orjson.loads(body), req.chat)

    async def stream(self, req: Request, idempotency_key: str) -> AsyncIterator[Chunk]:
        work = self._work(req)
        streams = self._add(work, random_id())
        tool = work.tool
        try:
            started: set[int] = set()
            async for s, batch in merge_streams(streams, stopped=_stopped):
                idx = s.req.index
                finish = batch[-1].finish_reason
                text = "".join(o.text for o in batch)
                if work.echo_prompts and idx not in started:
                    text = work.echo_prompts[idx // work.n] + text
                name = tool.name if tool is not None and idx not in started else None
                if tool is not None and finish == "stop" and not tool.named:
                    finish = "tool_calls"
                started.add(idx)
                yield Chunk(idx, text, finish, name)
            prompt = sum(len(p) for p in work.prompts)
            completion = sum(len(s.req.output_token_ids) for s in streams)
            yield Chunk(usage=Usage(prompt, completion))
        finally:
            self._abort(streams)

    async def embed(self, model: str, inputs: Sequence[str]) -> list[Embedding]:
        raise UnsupportedError(
            "the simulated engine serves generation only, not embeddings "
            "(use an embedding model on vLLM, over HTTP or in-process)"
        )

    async def resolve_model(self, model: str | None) -> str:
        return model or self._r.served[0]

    async def context_length(self, model: str) -> int | None:
        return self._r.max_model_len

    def token_counter(self) -> TokenCounter:
        return EngineTokenizerCounter(
            self._tok, lambda msgs: self._front.chat_format.render(msgs, add_generation_prompt=True)
        )

    def __repr__(self) -> str:
        return f"<SimBackend {self._r.served[0]} on {self._r.gpu.name} engine={self._engine!r}>"


async def _collect(s: RequestStream, work: Work) -> dict[str, Any]:
    parts: list[str] = []
    finish: str | None = None
    stop_reason: str | int | None = None
    while finish is None:
        batch = await s.next_batch()
        if not batch:
            raise error_for_status(503, "the engine stopped before the request finished", None)
        for out in batch:
            parts.append(out.text)
            finish, stop_reason = out.finish_reason, out.stop_reason
    prefix = work.echo_prompts[s.req.index // work.n] if work.echo_prompts else ""
    return {
        "index": s.req.index,
        "text": prefix + "".join(parts),
        "finish_reason": finish,
        "stop_reason": stop_reason,
    }


def _stopped() -> Exception:
    return error_for_status(503, "the engine stopped during the stream", None)


__all__ = ["SimBackend"]
