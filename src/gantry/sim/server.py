"""The simulator's HTTP server: vLLM's OpenAI-compatible API as a plain ASGI app."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gantry.protocol import (
    TEXT,
    BodyTooLarge,
    ClientGone,
    Receive,
    Scope,
    Send,
    encode_done,
    end_stream,
    header,
    read_body,
    respond,
    start_stream,
    stream_chunk,
)
from gantry.sim.admission import QueueLimits, orca_header, refusal
from gantry.sim.chat_format import prompt_ids
from gantry.sim.engine import RequestStream, SimEngine, merge_streams
from gantry.sim.extras import SimExtras
from gantry.sim.faults import Action, FaultConfig, decide
from gantry.sim.frontend import frontend
from gantry.sim.logprobs import Candidates
from gantry.sim.lora_api import SimLoraAPI
from gantry.sim.metrics import SimMetrics, cache_config_labels
from gantry.sim.parent import ParentRequest
from gantry.sim.responses import (
    ChunkWriter,
    chat_body,
    completion_body,
    random_id,
    tool_call_id,
    usage,
)
from gantry.sim.sequence import SimRequest
from gantry.sim.settings import VLLM_VERSION, ResolvedSim
from gantry.sim.token_outputs import TokenOutputs
from gantry.sim.tokenizer import Tokenizer
from gantry.sim.validate import VLLMError, Work, parse, schema_error

log = logging.getLogger("gantry.sim")

_PROTECTED = ("/v1", "/v2", "/inference", "/cohere")
_UNAUTHORIZED = orjson.dumps({"error": "Unauthorized"})
_NOT_FOUND = orjson.dumps({"detail": "Not Found"})
_NOT_ALLOWED = orjson.dumps({"detail": "Method Not Allowed"})
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class SimServer:
    """ASGI app. The engine starts and stops with the ASGI lifespan."""

    def __init__(self, resolved: ResolvedSim, *, engine_index: str = "0") -> None:
        self.r = resolved
        s = resolved.settings
        front = frontend(resolved)
        self.chat_format = front.chat_format
        self.tokenizer: Tokenizer = front.tokenizer
        self._candidates = Candidates(self.tokenizer)
        self.metrics = SimMetrics(resolved.served[0], resolved.max_model_len, engine_index)
        self.faults: FaultConfig = s.faults
        self._opts = front.options
        self._rng = random.Random(s.seed)
        self._publisher: Any = None
        self.engine: SimEngine | None = None
        self.in_flight = 0
        self._requests_seen = 0
        self._keys = [hashlib.sha256(k.encode()).digest() for k in s.api_keys]
        self._created = int(time.time())
        self._routes: dict[str, dict[str, Handler]] = {
            "/health": {"GET": self._health},
            "/ping": {"GET": self._health, "POST": self._health},
            "/load": {"GET": self._load},
            "/version": {"GET": self._version},
            "/metrics": {"GET": self._metrics},
            "/v1/models": {"GET": self._models},
            "/tokenize": {"POST": self._tokenize},
            "/detokenize": {"POST": self._detokenize},
            "/v1/completions": {"POST": self._completions},
            "/v1/chat/completions": {"POST": self._chat},
            "/kv_event_sources": {"GET": self._kv_sources},
        }
        self.lora = SimLoraAPI(self)
        self._routes.update(self.lora.routes())
        self._routes.update(SimExtras(self).routes())
        if s.admin:
            from gantry.sim.admin import SimAdmin

            self._routes.update(SimAdmin(self).routes())
        self.pd: Any = None  # a PDServe when the engine plays a P/D role
        if s.kv_transfer is not None:
            from gantry.sim.pd_serve import PDServe

            self.pd = PDServe(self, s.kv_transfer)
            self._routes.update(self.pd.routes())

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        r = self.r
        s = r.settings
        self.metrics.set_cache_config(
            cache_config_labels(
                block_size=s.block_size,
                cache_dtype=s.kv_cache_dtype,
                enable_prefix_caching=s.enable_prefix_caching,
                gpu_memory_utilization=s.gpu_memory_utilization,
                num_gpu_blocks=r.num_gpu_blocks,
            )
        )
        on_events = None
        if s.kv_events:
            from gantry.sim.kvevents import KVEventPublisher

            self._publisher = KVEventPublisher(
                s.kv_events,
                s.kv_events_topic,
                replay_endpoint=s.kv_events_replay,
                buffer_steps=s.kv_events_buffer_steps,
            )
            on_events = self._publisher.publish
        self.engine = SimEngine(
            r.engine_config(),
            r.latency_model(),
            self.metrics,
            on_kv_events=on_events,
        )
        self.engine.lora_metrics = self.lora.metrics
        await self.engine.__aenter__()
        self.apply_engine_faults()
        log.info(
            "simulated vLLM engine: model=%s gpu=%s tp=%d blocks=%d (%d tokens) "
            "max_model_len=%d max_num_seqs=%d max_num_batched_tokens=%d%s",
            r.served[0],
            r.gpu.name,
            s.tensor_parallel_size,
            r.num_gpu_blocks,
            r.num_gpu_blocks * s.block_size,
            r.max_model_len,
            r.scheduler.max_num_seqs,
            r.scheduler.max_num_batched_tokens,
            " instant" if s.instant else "",
        )

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
        if self._publisher is not None:
            self._publisher.close()

    def apply_engine_faults(self) -> None:
        if self.engine is None:
            return
        self.engine.slowdown = self.faults.slowdown
        reserve = int(self.faults.kv_reserve_frac * (self.r.num_gpu_blocks - 1))
        self.engine.kv.reserve(reserve)

    # -- ASGI -----------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        methods = self._routes.get(path)
        if methods is None:
            await respond(send, 404, _NOT_FOUND)
            return
        handler = methods.get(scope["method"])
        if handler is None:
            await respond(send, 405, _NOT_ALLOWED)
            return
        if self._keys and path.startswith(_PROTECTED) and not self._authorized(scope):
            await respond(send, 401, _UNAUTHORIZED)
            return
        await handler(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:  # report, as uvicorn expects
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _authorized(self, scope: Scope) -> bool:
        auth = header(scope, b"authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.strip().encode()).digest()
        return any(hmac.compare_digest(digest, k) for k in self._keys)

    # -- small endpoints ----------------------------------------------------------
    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        alive = self.engine is not None and self.engine.state.value == "running"
        await respond(send, 200 if alive else 503, b"", TEXT)

    async def _load(self, scope: Scope, receive: Receive, send: Send) -> None:
        # serve/instrumentator/basic.py: the counter moves only with the tracking flag.
        load = self.in_flight if self.r.settings.enable_server_load_tracking else 0
        await respond(send, 200, orjson.dumps({"server_load": load}))

    async def _version(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, orjson.dumps({"version": VLLM_VERSION}))

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = generate_latest(self.metrics.registry)
        await respond(send, 200, body, CONTENT_TYPE_LATEST.encode())

    async def _kv_sources(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = {"0": self._publisher.config()} if self._publisher is not None else {}
        await respond(send, 200, orjson.dumps(data))

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        cards = [
            {
                "id": name,
                "object": "model",
                "created": self._created,
                "owned_by": "vllm",
                "root": self.r.model.hf_id,
                "parent": None,
                "max_model_len": self.r.max_model_len,
                "permission": [self._permission()],
            }
            for name in self.r.served
        ]
        cards += self.lora.cards(self._created, self._permission)
        await respond(send, 200, orjson.dumps({"object": "list", "data": cards}))

    def _permission(self) -> dict[str, Any]:
        return {
            "id": "modelperm-" + random_id(),
            "object": "model_permission",
            "created": self._created,
            "allow_create_engine": False,
            "allow_sampling": True,
            "allow_logprobs": True,
            "allow_search_indices": False,
            "allow_view": True,
            "allow_fine_tuning": False,
            "organization": "*",
            "group": None,
            "is_blocking": False,
        }

    async def json_body(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        ctype = header(scope, b"content-type") or ""
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise VLLMError(
                400, "Unsupported Media Type: Only 'application/json' is allowed", "Bad Request"
            )
        try:
            raw = await read_body(receive, self.r.settings.max_body_bytes)
        except BodyTooLarge:
            raise VLLMError(413, "Request body too large", "Bad Request") from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise VLLMError(400, f"JSON decode error: {exc}", "Bad Request", "body") from None
        if not isinstance(body, dict):
            raise schema_error("body", "Input should be a valid dictionary", "...")
        return body

    async def guard(self, handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await handler(scope, receive, send)
        except VLLMError as err:
            await respond(send, err.status, err.body())
        except ClientGone:
            return

    async def _tokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def run(scope: Scope, receive: Receive, send: Send) -> None:
            body = await self.json_body(scope, receive)
            if "messages" in body:
                msgs = body["messages"]
                if not isinstance(msgs, list):
                    raise schema_error("messages", "Input should be a valid list", msgs)
                text = self.chat_format.render(
                    msgs, add_generation_prompt=body.get("add_generation_prompt", True) is not False
                )
                ids = self.tokenizer.encode(text)  # add_special_tokens: false for messages
            elif isinstance(body.get("prompt"), str):
                ids = prompt_ids(self.tokenizer, self.chat_format, body["prompt"])
                if body.get("add_special_tokens") is False:
                    ids = self.tokenizer.encode(body["prompt"])
            else:
                raise schema_error("prompt", "Field required", None)
            strs = (
                [self.tokenizer.token_text(t) for t in ids]
                if body.get("return_token_strs")
                else None
            )
            await respond(
                send,
                200,
                orjson.dumps(
                    {
                        "count": len(ids),
                        "max_model_len": self.r.max_model_len,
                        "tokens": ids,
                        "token_strs": strs,
                    }
                ),
            )

        await self.guard(run, scope, receive, send)

    async def _detokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def run(scope: Scope, receive: Receive, send: Send) -> None:
            body = await self.json_body(scope, receive)
            tokens = body.get("tokens")
            if not isinstance(tokens, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in tokens
            ):
                raise schema_error("tokens", "Input should be a valid list of integers", tokens)
            bad = next((t for t in tokens if t < 0 or t >= self.tokenizer.vocab_size), None)
            if bad is not None:
                raise VLLMError(
                    400, f"Token id {bad} is out of vocabulary", "BadRequestError", "tokens"
                )
            await respond(send, 200, orjson.dumps({"prompt": self.tokenizer.decode(tokens)}))

        await self.guard(run, scope, receive, send)

    # -- generation -----------------------------------------------------------------
    @property
    def chat_handler(self) -> Handler:
        return self._chat

    @property
    def completions_handler(self) -> Handler:
        return self._completions

    async def _completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.guard(self._generate_chat_or_text(False), scope, receive, send)

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.guard(self._generate_chat_or_text(True), scope, receive, send)

    def _generate_chat_or_text(self, chat: bool) -> Handler:
        async def run(scope: Scope, receive: Receive, send: Send) -> None:
            body = await self.json_body(scope, receive)
            rid_base = header(scope, b"x-request-id") or body.get("request_id") or random_id()
            lora = self.lora.adapter_of(body)
            work = parse(
                body,
                chat=chat,
                served=self.r.served if lora is None else [lora],
                tok=self.tokenizer,
                max_model_len=self.r.max_model_len,
                request_seed=self._rng.getrandbits(32),
                server=self._opts,
            )
            rid = ("chatcmpl-" if chat else "cmpl-") + str(rid_base)
            self.in_flight += 1
            pinned = None
            try:
                if self.pd is not None:
                    work = dataclasses.replace(work, kv_params=body.get("kv_transfer_params"))
                    pinned, external = await self.pd.before(work, work.kv_params, rid)
                    work = dataclasses.replace(work, external_tokens=external)
                await self._serve(work, rid, scope, receive, send, lora)
            finally:
                self.in_flight -= 1
                if pinned:
                    self.pd.release(pinned)

        return run

    async def _serve(
        self, work: Work, rid: str, scope: Scope, receive: Receive, send: Send, lora: str | None
    ) -> None:
        assert self.engine is not None
        self._admit(work)  # before any byte: vLLM's _preflight refuses with a real 503
        self._requests_seen += 1
        f = self.faults
        if f.crash_after and self._requests_seen > f.crash_after:
            log.error("fault injection: crash after %d requests", f.crash_after)
            self.metrics.faults.labels(kind="crash").inc()
            os.kill(os.getpid(), signal.SIGKILL)
        decision = decide(f, self._rng) if f.active else None
        if work.stream and (decision is None or decision.action is not Action.ERROR):
            await start_stream(send)  # vLLM sends headers before the first token
        if decision is not None:
            if decision.delay_s:
                self.metrics.faults.labels(kind="latency").inc()
                await asyncio.sleep(decision.delay_s)
            if decision.action is Action.ERROR:
                self.metrics.faults.labels(kind=f"error_{decision.status}").inc()
                log.warning("fault injection: HTTP %d for %s", decision.status, rid)
                raise _fault_error(decision.status)
            if decision.action is Action.HANG:
                self.metrics.faults.labels(kind="hang").inc()
                log.warning("fault injection: hanging %s", rid)
                await _until_disconnect(receive)
                return
        now = time.monotonic()
        lat, running = self.engine.latency, self.engine.num_running
        overhead = lat.request_overhead_at(running) / self.r.settings.speedup
        if overhead:
            await asyncio.sleep(overhead)  # API-server work before the engine sees it
        streams: list[RequestStream] = []
        for p_idx, ids in enumerate(work.prompts):
            parent = ParentRequest(work.n) if work.n > 1 else None
            for i in range(work.n):
                req = SimRequest(
                    request_id=f"{rid}-{p_idx}",
                    prompt_token_ids=ids,
                    sampling=work.sampling[p_idx],
                    tokenizer=self.tokenizer,
                    arrival=now,
                    cache_salt=work.cache_salt,
                    index=p_idx * work.n + i,
                    lora=lora,
                    parent=parent,
                    num_external_prompt=work.external_tokens,
                )
                streams.append(self.engine.add(req))
        watcher = asyncio.create_task(self._watch_disconnect(receive, streams))
        try:
            if work.stream:
                await self._stream(work, rid, streams, send, decision, receive)
            else:
                await self._complete(work, rid, streams, send, scope)
        finally:
            watcher.cancel()
            for s in streams:
                if not s.closed:
                    self.engine.abort(s)

    def _admit(self, work: Work) -> None:
        """--max-num-queued-reqs/-tokens: 503 beyond the limits, counted by reason."""
        s = self.r.settings
        if s.max_num_queued_reqs is None and s.max_num_queued_tokens is None:
            return
        assert self.engine is not None
        sched = self.engine.scheduler
        live = [*sched.running, *sched.waiting]
        reason = refusal(
            QueueLimits(s.max_num_queued_reqs, s.max_num_queued_tokens),
            unfinished=len(live),
            prefill_tokens=sum(
                r.num_prompt_tokens for r in live if r.num_computed < r.num_prompt_tokens
            ),
            new_reqs=work.n * len(work.prompts),
        )
        if reason is not None:
            self.metrics.admission_rejections.labels(
                model_name=self.r.served[0], engine="0", reason=reason
            ).inc()
            raise _fault_error(503)

    def _load_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        e = self.engine
        value = orca_header(
            header(scope, b"endpoint-load-metrics-format"),
            e.kv.usage if e else 0.0,
            e.num_waiting if e else 0,
        )
        return [(b"endpoint-load-metrics", value)] if value else []

    async def _watch_disconnect(self, receive: Receive, streams: list[RequestStream]) -> None:
        await _until_disconnect(receive)
        assert self.engine is not None
        for s in streams:
            self.engine.abort(s)

    def _cached(self, streams: list[RequestStream]) -> int | None:
        if not self.r.settings.enable_prompt_tokens_details:
            return None
        return sum(max(0, s.req.num_cached_prompt) for s in streams[:: max(1, len(streams))])

    def _usage(self, work: Work, streams: list[RequestStream]) -> dict[str, Any]:
        prompt = sum(len(p) for p in work.prompts)
        completion = sum(len(s.req.output_token_ids) for s in streams)
        cached = None
        if self.r.settings.enable_prompt_tokens_details:
            cached = sum(max(0, s.req.num_cached_prompt) for s in streams[:: work.n])
        return usage(prompt, completion, cached)

    def _token_outputs(self, work: Work) -> TokenOutputs | None:
        if not work.logprobs.any:
            return None
        echo = work.echo_prompts is not None
        return TokenOutputs(
            work.logprobs, self.tokenizer, self._candidates, chat=work.chat, echo=echo
        )

    async def _complete(
        self,
        work: Work,
        rid: str,
        streams: list[RequestStream],
        send: Send,
        scope: Scope,
    ) -> None:
        choices = []
        outs = self._token_outputs(work)
        for s in streams:
            text, finish, stop_reason = [], None, None
            while finish is None:
                batch = await s.next_batch()
                if not batch:
                    finish = "abort"
                    break
                for out in batch:
                    text.append(out.text)
                    finish, stop_reason = out.finish_reason, out.stop_reason
            if finish == "abort":
                return  # client went away: nobody to answer
            prefix = work.echo_prompts[s.req.index // work.n] if work.echo_prompts else ""
            choices.append(
                {
                    "index": s.req.index,
                    "text": prefix + "".join(text),
                    "finish_reason": finish,
                    "stop_reason": stop_reason,
                    **(outs.final(s.req) if outs else {}),
                }
            )
        kw: dict[str, Any] = dict(
            rid=rid,
            created=int(time.time()),
            model=work.model,
            fingerprint=self.r.fingerprint,
            choices=choices,
            usage_=self._usage(work, streams),
        )
        if work.chat:
            prompt = outs.prompt_fields(streams[0].req) if outs else None
            body = chat_body(**kw, tool=work.tool, prompt=prompt)
        else:
            body = completion_body(**kw)
        if self.pd is not None:
            params = self.pd.produced(work, work.kv_params, rid, scope)
            if params is not None:  # vLLM's response field for the decode engine
                body = orjson.dumps({**orjson.loads(body), "kv_transfer_params": params})
        await respond(send, 200, body, headers=self._load_headers(scope))

    async def _stream(
        self,
        work: Work,
        rid: str,
        streams: list[RequestStream],
        send: Send,
        decision: Any,
        receive: Receive,
    ) -> None:
        w = ChunkWriter(
            chat=work.chat,
            rid=rid,
            created=int(time.time()),
            model=work.model,
            fingerprint=self.r.fingerprint,
        )
        prompt_len = {s.req.index: len(s.req.prompt_token_ids) for s in streams}
        counts = {s.req.index: 0 for s in streams}
        sent = dict.fromkeys(counts, 0)  # output characters sent (completions' text_offset)
        outs = self._token_outputs(work)
        tool_ids = {s.req.index: tool_call_id() for s in streams} if work.tool else {}
        chunks_sent = 0
        limit = (
            decision.after_tokens
            if decision and decision.action in (Action.STALL, Action.DROP)
            else -1
        )
        async for s, batch in merge_streams(streams):
            idx = s.req.index
            first, start = counts[idx] == 0, counts[idx]
            counts[idx] += len(batch)
            finish = batch[-1].finish_reason
            if finish == "abort":
                return
            stop_reason = batch[-1].stop_reason
            text = "".join(o.text for o in batch)
            extras = outs.delta(s.req, start, len(batch), sent[idx], first) if outs else None
            sent[idx] += len(text)
            cu = usage(prompt_len[idx], counts[idx], None) if work.continuous_usage else None
            out = b""
            if work.chat and first:
                pids = list(s.req.prompt_token_ids) if work.logprobs.token_ids else None
                out += w.role(idx, usage(prompt_len[idx], 0, None) if cu else None, pids)
            if work.echo_prompts and first:
                text = work.echo_prompts[idx // work.n] + text
            tool_delta = None
            if work.tool is not None:
                tool_delta = [{"index": 0, "function": {"arguments": text}}]
                if first:
                    tool_delta[0].update(id=tool_ids[idx], type="function")
                    tool_delta[0]["function"] = {"name": work.tool.name, "arguments": text}
                if finish == "stop" and not work.tool.named:
                    finish = "tool_calls"
            out += w.token(
                idx,
                text,
                finish,
                stop_reason,
                cont_usage=cu,
                tool_delta=tool_delta,
                extras=extras,
                fingerprint=finish is not None and not work.include_usage,
            )
            await stream_chunk(send, out)
            chunks_sent += 1
            if chunks_sent == limit:
                for st in streams:
                    self.engine.abort(st) if self.engine else None
                if decision.action is Action.STALL:
                    self.metrics.faults.labels(kind="stall").inc()
                    log.warning("fault injection: stalling stream %s", rid)
                    await _until_disconnect(receive)
                    return
                self.metrics.faults.labels(kind="drop").inc()
                log.warning("fault injection: dropping connection of %s", rid)
                return  # response left incomplete: the server closes the connection
        if work.include_usage:
            await stream_chunk(send, w.usage(self._usage(work, streams)))
        await end_stream(send, encode_done())


async def _until_disconnect(receive: Receive) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return


def _fault_error(status: int) -> VLLMError:
    if status == 429:
        return VLLMError(429, "Too many requests (injected fault).", "RateLimitError")
    if status == 503:
        return VLLMError(
            503,
            "The engine is currently busy and cannot accept new requests. "
            "Please try again later or on a different instance.",
            "Service Unavailable",
        )
    return VLLMError(
        500, "The server had an error while processing your request.", "InternalServerError"
    )
