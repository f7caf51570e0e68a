"""The one seam under every mode: a ``Backend`` sends one request to one engine.

``HttpBackend`` (any OpenAI-compatible server), ``SimBackend`` (the simulator's engine
in this process) and ``VllmBackend`` (vLLM's ``AsyncLLM`` in this process) implement
it. Retries, the context check, batching and statistics live above, in ``AsyncClient``,
so they are the same in every mode.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from gantry.client._tokens import TokenCounter
from gantry.client._types import Chunk, Completion, Embedding, Request


class Backend(Protocol):
    mode: str  # "http", "sim" or "vllm"
    batch_concurrency: int  # how many requests of a batch to have in flight at once

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def complete(self, req: Request, idempotency_key: str) -> Completion: ...

    def stream(self, req: Request, idempotency_key: str) -> AsyncIterator[Chunk]:
        """Chunks of one streamed answer. Errors raised before the first chunk are the
        same as ``complete``'s (so retryable ones can be retried); after it, they are
        ``StreamError``."""
        ...

    async def embed(self, model: str, inputs: Sequence[str]) -> list[Embedding]: ...

    async def resolve_model(self, model: str | None) -> str:
        """``model``, or the engine's first model when not given."""
        ...

    async def context_length(self, model: str) -> int | None:
        """The model's context length, or None when the engine does not say."""
        ...

    def token_counter(self) -> TokenCounter | None:
        """The engine's own tokenizer, when it is in this process."""
        ...


__all__ = ["Backend"]
