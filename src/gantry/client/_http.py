"""HTTP mode: any OpenAI-compatible server (gantry's gateway, vLLM, OpenAI) over httpx.

httpx gives one well-kept client for HTTP/1.1 keep-alive pools, streaming responses and
timeouts, and it is already what the ``openai`` SDK uses, so a deployment that has one
has the other. Foreign exceptions are translated here (``_map_errors``) and nowhere
else. Every request carries the ``Idempotency-Key`` the client chose for it, so the
gateway runs a retried request once and replays its answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson

from gantry.client._errors import (
    ClientSDKError,
    ConnectionLost,
    ModeUnavailableError,
    StreamError,
    error_for_status,
)
from gantry.client._retry import parse_retry_after
from gantry.client._tokens import TokenCounter
from gantry.client._types import (
    Chunk,
    Completion,
    Embedding,
    Request,
    parse_chunk,
    parse_completion,
)

if TYPE_CHECKING:
    import httpx

_MAX_MODELS = 256  # model cards remembered (a server lists a bounded set)


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:
        raise ModeUnavailableError("HTTP mode needs httpx: pip install 'gantry[client]'") from None
    return httpx


@contextmanager
def _map_errors() -> Iterator[None]:
    """httpx failures before any response byte -> ``ConnectionLost`` (retryable)."""
    httpx = _httpx()
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
        raise ConnectionLost(f"no answer: {type(exc).__name__}: {exc}") from None
    except (httpx.ReadError, httpx.WriteError, httpx.ReadTimeout, httpx.PoolTimeout) as exc:
        raise ConnectionLost(f"no answer: {type(exc).__name__}: {exc}") from None


def _error_from(status: int, headers: Any, body: bytes) -> ClientSDKError:
    message = body.decode("utf-8", "replace")[:2000] or f"HTTP {status}"
    try:
        data = orjson.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or message)
        elif isinstance(data, dict) and "detail" in data:
            message = str(data["detail"])
    except orjson.JSONDecodeError:
        pass
    return error_for_status(status, message, parse_retry_after(headers.get("retry-after")))


class HttpBackend:
    mode = "http"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        max_connections: int = 64,
        batch_concurrency: int = 16,
        headers: dict[str, str] | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        self.base_url = base[:-3] if base.endswith("/v1") else base
        self.batch_concurrency = batch_concurrency
        self._headers = dict(headers or {})
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = (timeout_s, connect_timeout_s)
        self._max_connections = max_connections
        self._http: httpx.AsyncClient | None = None
        self._cards: dict[str, int | None] = {}
        self._first_model: str | None = None

    async def start(self) -> None:
        httpx = _httpx()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=httpx.Timeout(self._timeout[0], connect=self._timeout[1]),
            limits=httpx.Limits(
                max_connections=self._max_connections,
                max_keepalive_connections=self._max_connections,
            ),
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def http(self) -> httpx.AsyncClient:
        assert self._http is not None, "start() first"
        return self._http

    async def complete(self, req: Request, idempotency_key: str) -> Completion:
        with _map_errors():
            r = await self.http.post(
                req.path,
                content=orjson.dumps(req.body),
                headers={"Idempotency-Key": idempotency_key, "Content-Type": "application/json"},
            )
        if r.status_code != 200:
            raise _error_from(r.status_code, r.headers, r.content)
        try:
            return parse_completion(orjson.loads(r.content), req.chat)
        except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
            raise StreamError(f"the answer is not a completion: {exc}") from None

    async def stream(self, req: Request, idempotency_key: str) -> AsyncIterator[Chunk]:
        body = {**req.body, "stream": True}
        body.setdefault("stream_options", {"include_usage": True})
        request = self.http.build_request(
            "POST",
            req.path,
            content=orjson.dumps(body),
            headers={"Idempotency-Key": idempotency_key, "Content-Type": "application/json"},
        )
        with _map_errors():
            r = await self.http.send(request, stream=True)
        try:
            if r.status_code != 200:
                with _map_errors():
                    raw = await r.aread()
                raise _error_from(r.status_code, r.headers, raw)
            seen = False
            async for data in _events(r):
                if data == b"[DONE]":
                    return
                event = orjson.loads(data)
                err = event.get("error") if isinstance(event, dict) else None
                if isinstance(err, dict):
                    raise _stream_error(err, before_first=not seen)
                for chunk in parse_chunk(event, req.chat):
                    seen = True
                    yield chunk
            raise StreamError("the stream ended without [DONE]")
        finally:
            await r.aclose()

    async def embed(self, model: str, inputs: Sequence[str]) -> list[Embedding]:
        with _map_errors():
            r = await self.http.post(
                "/v1/embeddings", content=orjson.dumps({"model": model, "input": list(inputs)})
            )
        if r.status_code != 200:
            err = _error_from(r.status_code, r.headers, r.content)
            if r.status_code in (404, 405) or "embedding" in err.message.lower():
                err.message = f"{model} is not served for embeddings here: {err.message}"
                err.args = (err.message,)
            raise err
        data = orjson.loads(r.content).get("data") or []
        return [
            Embedding(int(d.get("index", i)), tuple(d["embedding"])) for i, d in enumerate(data)
        ]

    async def _load_models(self) -> None:
        with _map_errors():
            r = await self.http.get("/v1/models")
        if r.status_code != 200:
            raise _error_from(r.status_code, r.headers, r.content)
        cards = orjson.loads(r.content).get("data") or []
        if len(self._cards) + len(cards) > _MAX_MODELS:
            self._cards.clear()
        for c in cards[:_MAX_MODELS]:
            mml = c.get("max_model_len")
            self._cards[str(c.get("id"))] = mml if isinstance(mml, int) else None
        if cards:
            self._first_model = str(cards[0].get("id"))

    async def resolve_model(self, model: str | None) -> str:
        if model:
            return model
        if self._first_model is None:
            await self._load_models()
        if self._first_model is None:
            raise ModeUnavailableError(f"{self.base_url} lists no model; pass model=")
        return self._first_model

    async def context_length(self, model: str) -> int | None:
        if model not in self._cards:
            try:
                await self._load_models()
            except ClientSDKError:
                return None  # the server's own check still applies
            self._cards.setdefault(model, None)
        return self._cards.get(model)

    def token_counter(self) -> TokenCounter | None:
        return None

    def __repr__(self) -> str:
        return f"<HttpBackend {self.base_url}>"


async def _events(r: httpx.Response) -> AsyncIterator[bytes]:
    """The ``data:`` payloads of an SSE stream (comments and other fields skipped)."""
    httpx = _httpx()
    try:
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                yield line[5:].strip().encode()
    except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout) as exc:
        raise StreamError(f"the stream broke: {type(exc).__name__}: {exc}") from None


def _stream_error(err: dict[str, Any], *, before_first: bool) -> ClientSDKError:
    message = str(err.get("message") or "error in stream")
    code = err.get("code")
    if before_first and isinstance(code, int) and code >= 400:
        return error_for_status(code, message, None)
    return StreamError(message)


__all__ = ["HttpBackend"]
