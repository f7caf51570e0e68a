"""``AsyncClient``: the same API over every backend, with the context check, retries,
batching and statistics done once, here.

Lifecycle: ``NEW`` → ``OPEN`` (on ``async with`` or the first call) → ``CLOSED``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Unpack

from gantry.client._backend import Backend
from gantry.client._errors import ClientSDKError, StreamError
from gantry.client._retry import RetryPolicy
from gantry.client._stats import ClientStats, StatsSnapshot
from gantry.client._tokens import (
    HeuristicCounter,
    HFTokenizerCounter,
    TokenCounter,
    check_fit,
    chunk_text,
)
from gantry.client._types import Chunk, Completion, Embedding, Options, Request

log = logging.getLogger("gantry.client")

Messages = Sequence[dict[str, Any]]


class ClientState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class AsyncClient:
    """Chat, completions, batches and embeddings on one backend.

    Build one with ``create_client()`` (which picks the mode) or directly with a
    ``Backend``. ``defaults`` are options every request gets unless it sets them
    (``{"temperature": 0, "seed": 42}`` makes every answer reproducible).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        model: str | None = None,
        defaults: Options | None = None,
        retry: RetryPolicy | None = None,
        tokenizer: str | Path | None = None,
        check_context: bool = True,
        reason: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self.backend = backend
        self.model = model
        self.defaults: Options = dict(defaults or {})  # type: ignore[assignment]
        self.retry = retry or RetryPolicy()
        self.check_context = check_context
        self.reason = reason
        self._tokenizer_path = tokenizer
        self._counter: TokenCounter | None = None
        self._stats = ClientStats()
        self._rng = rng or random.Random()
        self.state = ClientState.NEW
        self._lock = asyncio.Lock()

    @property
    def mode(self) -> str:
        return self.backend.mode

    # -- lifecycle ----------------------------------------------------------------
    async def __aenter__(self) -> AsyncClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        async with self._lock:
            if self.state is ClientState.CLOSED:
                raise ClientSDKError("the client is closed")
            if self.state is ClientState.NEW:
                await self.backend.start()
                self.state = ClientState.OPEN

    async def aclose(self) -> None:
        if self.state is ClientState.OPEN:
            await self.backend.close()
        self.state = ClientState.CLOSED

    # -- tokens ---------------------------------------------------------------------
    @property
    def counter(self) -> TokenCounter:
        """The token counter in use: a given tokenizer.json, the in-process engine's
        tokenizer, or the documented heuristic."""
        if self._counter is None:
            if self._tokenizer_path is not None:
                self._counter = HFTokenizerCounter(self._tokenizer_path)
            else:
                own = self.backend.token_counter() if self.state is ClientState.OPEN else None
                if own is None:
                    return HeuristicCounter()
                self._counter = own
        return self._counter

    def count_tokens(self, text_or_messages: str | Messages) -> int:
        if isinstance(text_or_messages, str):
            return self.counter.count(text_or_messages)
        return self.counter.count_messages(text_or_messages)

    def chunk(self, text: str, max_tokens: int, overlap: int = 0) -> list[str]:
        """``text`` in pieces of at most ``max_tokens`` tokens (this client's counter),
        each repeating the last ``overlap`` tokens of the one before."""
        return chunk_text(text, max_tokens, overlap, self.counter)

    async def context_room(
        self, payload: str | Messages, max_tokens: int | None = None, model: str | None = None
    ) -> int:
        """Tokens left for the completion; ``ContextOverflowError`` (with the numbers)
        when the prompt and ``max_tokens`` cannot fit. Unknown context length: no check."""
        await self.start()
        name = await self.backend.resolve_model(model or self.model)
        limit = await self.backend.context_length(name)
        prompt = self.count_tokens(payload)
        if limit is None:
            return max(0, (max_tokens or 0))
        return check_fit(prompt, max_tokens, limit)

    # -- one request ------------------------------------------------------------------
    async def _request(self, chat: bool, payload: Any, opts: Options) -> Request:
        await self.start()
        merged: Options = {**self.defaults, **opts}
        model = await self.backend.resolve_model(merged.get("model") or self.model)
        req = Request.build(chat, payload, model, merged)
        if self.check_context and (chat or isinstance(payload, str)):
            await self.context_room(payload, req.max_tokens, model)
        return req

    async def _send(self, req: Request) -> Completion:
        self._stats.started()
        key = uuid.uuid4().hex  # one key for every try of this request
        t0 = time.monotonic()
        attempt = 1
        while True:
            try:
                res = await self.backend.complete(req, key)
            except ClientSDKError as err:
                await self._after_failure(err, attempt)
                attempt += 1
                continue
            self._stats.finished(
                time.monotonic() - t0, res.usage.prompt_tokens, res.usage.completion_tokens
            )
            return res

    async def _after_failure(self, err: ClientSDKError, attempt: int) -> None:
        """Wait before the next try, or record the failure and raise."""
        delay = self.retry.delay(attempt, err, self._rng)
        if delay is None:
            self._stats.failed_with(err.kind)
            raise err
        self._stats.retried()
        log.info("retrying in %.2fs after %s (try %d): %s", delay, err.kind, attempt, err)
        await asyncio.sleep(delay)

    async def _run(self, chat: bool, payload: Any, opts: Options) -> Completion:
        try:
            req = await self._request(chat, payload, opts)
        except ClientSDKError as err:
            self._stats.started()
            self._stats.failed_with(err.kind)
            raise
        return await self._send(req)

    async def chat(self, messages: Messages, **opts: Unpack[Options]) -> Completion:
        return await self._run(True, list(messages), opts)

    async def complete(self, prompt: str | list[int], **opts: Unpack[Options]) -> Completion:
        return await self._run(False, prompt, opts)

    # -- streams ------------------------------------------------------------------------
    def stream_chat(self, messages: Messages, **opts: Unpack[Options]) -> AsyncIterator[Chunk]:
        return self._stream(True, list(messages), opts)

    def stream_complete(self, prompt: str, **opts: Unpack[Options]) -> AsyncIterator[Chunk]:
        return self._stream(False, prompt, opts)

    async def _open_stream(
        self, req: Request, key: str
    ) -> tuple[AsyncIterator[Chunk], Chunk | None]:
        """The stream and its first chunk; retryable failures before it are retried."""
        attempt = 1
        while True:
            it = aiter(self.backend.stream(req, key))
            try:
                return it, await anext(it)
            except StopAsyncIteration:
                return it, None
            except ClientSDKError as err:
                await _close(it)
                await self._after_failure(err, attempt)
                attempt += 1

    async def _stream(self, chat: bool, payload: Any, opts: Options) -> AsyncIterator[Chunk]:
        try:
            req = await self._request(chat, payload, opts)
        except ClientSDKError as err:
            self._stats.started()
            self._stats.failed_with(err.kind)
            raise
        self._stats.started()
        t0 = time.monotonic()
        it, first = await self._open_stream(req, uuid.uuid4().hex)
        self._stats.first_token(time.monotonic() - t0)
        usage = None
        try:
            chunk = first
            while chunk is not None:
                if chunk.usage is not None:
                    usage = chunk.usage
                yield chunk
                chunk = await anext(it, None)
        except ClientSDKError as err:
            failure = err if isinstance(err, StreamError) else StreamError(str(err))
            self._stats.failed_with(failure.kind)
            raise failure from None
        finally:
            await _close(it)
        self._stats.finished(
            time.monotonic() - t0,
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
        )

    # -- batches ------------------------------------------------------------------------
    async def chat_batch(
        self,
        conversations: Sequence[Messages],
        *,
        concurrency: int | None = None,
        **opts: Unpack[Options],
    ) -> list[Completion | ClientSDKError]:
        """One answer per conversation, in order; a failed item holds its error."""
        return await self._batch(True, [list(c) for c in conversations], concurrency, opts)

    async def complete_batch(
        self,
        prompts: Sequence[str],
        *,
        concurrency: int | None = None,
        **opts: Unpack[Options],
    ) -> list[Completion | ClientSDKError]:
        return await self._batch(False, list(prompts), concurrency, opts)

    async def _batch(
        self, chat: bool, payloads: list[Any], concurrency: int | None, opts: Options
    ) -> list[Completion | ClientSDKError]:
        """At most ``concurrency`` requests in flight (the engine's batch size in
        process, where they are scheduled together); order kept."""
        await self.start()
        results: list[Completion | ClientSDKError | None] = [None] * len(payloads)
        todo = iter(range(len(payloads)))

        async def worker() -> None:
            for i in todo:
                try:
                    results[i] = await self._run(chat, payloads[i], opts)
                except ClientSDKError as err:
                    results[i] = err

        n = max(1, min(concurrency or self.backend.batch_concurrency, len(payloads)))
        await asyncio.gather(*(worker() for _ in range(n)))
        return [r for r in results if r is not None]

    # -- embeddings ----------------------------------------------------------------------
    async def embed(
        self, inputs: str | Sequence[str], *, model: str | None = None
    ) -> list[Embedding]:
        await self.start()
        name = await self.backend.resolve_model(model or self.model)
        items = [inputs] if isinstance(inputs, str) else list(inputs)
        self._stats.started()
        t0 = time.monotonic()
        try:
            out = await self.backend.embed(name, items)
        except ClientSDKError as err:
            self._stats.failed_with(err.kind)
            raise
        self._stats.finished(time.monotonic() - t0, 0, 0)
        return out

    # -- statistics ----------------------------------------------------------------------
    def stats(self) -> StatsSnapshot:
        return self._stats.snapshot()

    def __repr__(self) -> str:
        return f"<AsyncClient mode={self.mode} state={self.state.value} {self._stats!r}>"


async def _close(it: AsyncIterator[Chunk]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


__all__ = ["AsyncClient", "ClientState"]
