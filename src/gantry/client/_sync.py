"""``Client``: the synchronous face of ``AsyncClient``, a thin wrapper.

It owns one event loop in a daemon thread; each call runs the async method there and
waits for it. Nothing is implemented twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar, Unpack

from gantry.client._client import AsyncClient, Messages
from gantry.client._errors import ClientSDKError
from gantry.client._select import create_client
from gantry.client._stats import StatsSnapshot
from gantry.client._types import Chunk, Completion, Embedding, Options

T = TypeVar("T")


class Client:
    """Takes ``create_client()``'s arguments, or an ``AsyncClient`` (``wrap=``)."""

    def __init__(
        self, url: str | None = None, *, wrap: AsyncClient | None = None, **kwargs: Any
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="gantry-client", daemon=True
        )
        self._thread.start()
        self.aio = wrap if wrap is not None else create_client(url, **kwargs)

    def _call(self, coro: Awaitable[T]) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        return fut.result()

    def __enter__(self) -> Client:
        self._call(self.aio.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self.aio.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def mode(self) -> str:
        return self.aio.mode

    @property
    def reason(self) -> str:
        return self.aio.reason

    def chat(self, messages: Messages, **opts: Unpack[Options]) -> Completion:
        return self._call(self.aio.chat(messages, **opts))

    def complete(self, prompt: str | list[int], **opts: Unpack[Options]) -> Completion:
        return self._call(self.aio.complete(prompt, **opts))

    def stream_chat(self, messages: Messages, **opts: Unpack[Options]) -> Iterator[Chunk]:
        return self._iterate(self.aio.stream_chat(messages, **opts))

    def stream_complete(self, prompt: str, **opts: Unpack[Options]) -> Iterator[Chunk]:
        return self._iterate(self.aio.stream_complete(prompt, **opts))

    def _iterate(self, agen: Any) -> Iterator[Chunk]:
        try:
            while True:
                try:
                    yield self._call(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._call(agen.aclose())

    def chat_batch(
        self,
        conversations: Sequence[Messages],
        *,
        concurrency: int | None = None,
        **opts: Unpack[Options],
    ) -> list[Completion | ClientSDKError]:
        return self._call(self.aio.chat_batch(conversations, concurrency=concurrency, **opts))

    def complete_batch(
        self, prompts: Sequence[str], *, concurrency: int | None = None, **opts: Unpack[Options]
    ) -> list[Completion | ClientSDKError]:
        return self._call(self.aio.complete_batch(prompts, concurrency=concurrency, **opts))

    def embed(self, inputs: str | Sequence[str], *, model: str | None = None) -> list[Embedding]:
        return self._call(self.aio.embed(inputs, model=model))

    def count_tokens(self, text_or_messages: str | Messages) -> int:
        return self.aio.count_tokens(text_or_messages)

    def context_room(
        self, payload: str | Messages, max_tokens: int | None = None, model: str | None = None
    ) -> int:
        return self._call(self.aio.context_room(payload, max_tokens, model))

    def chunk(self, text: str, max_tokens: int, overlap: int = 0) -> list[str]:
        return self.aio.chunk(text, max_tokens, overlap)

    def stats(self) -> StatsSnapshot:
        return self.aio.stats()

    def __repr__(self) -> str:
        return f"<Client {self.aio!r}>"


__all__ = ["Client"]
