"""The narrow seam under all engine I/O.

``EngineTransport.send()`` returns an ``EngineResponse`` as soon as the status line
and headers arrive; the body is read whole (``read()``) or as it comes
(``iter_chunks()``). ``HTTPTransport`` uses a pooled aiohttp session; tests and the
in-process mode can provide their own transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from gantry.errors import EngineTimeout, RetryableEngineError


@dataclass(slots=True)
class EngineRequest:  # built per request: not frozen (frozen dataclasses build ~2x slower)
    method: str
    path: str
    body: bytes | None = None
    headers: Mapping[str, str] | None = None
    connect_timeout: float = 5.0
    read_timeout: float | None = None  # first byte of the response


class EngineResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...

    def iter_chunks(self) -> AsyncIterator[bytes]: ...

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body, None at its end. Safe to cancel and call again."""
        ...

    def close(self) -> None: ...


class EngineTransport(Protocol):
    async def send(self, request: EngineRequest) -> EngineResponse: ...

    async def aclose(self) -> None: ...


class _AiohttpResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        finally:
            self._resp.release()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._resp.content.iter_any():
            yield chunk

    async def next_chunk(self) -> bytes | None:
        chunk = await self._resp.content.readany()
        return chunk or None

    def close(self) -> None:
        self._resp.close()


class HTTPTransport:
    """HTTP/1.1 to one engine, keep-alive connections pooled per engine."""

    def __init__(self, base_url: str, *, api_key: str | None = None, limit: int = 0) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                keepalive_timeout=4.0,
                enable_cleanup_closed=True,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def send(self, request: EngineRequest) -> EngineResponse:
        headers = dict(self._auth)
        if request.headers:
            headers.update(request.headers)
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=request.connect_timeout,
            sock_read=None,
        )
        url = self.base_url + request.path
        try:
            cm = self._client().request(
                request.method,
                url,
                data=request.body,
                headers=headers,
                timeout=timeout,
            )
            if request.read_timeout is not None:
                resp = await asyncio.wait_for(cm, request.read_timeout)
            else:
                resp = await cm
        except TimeoutError as exc:
            raise EngineTimeout(f"engine {self.base_url} timed out", engine=self.base_url) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise RetryableEngineError(
                f"engine {self.base_url} unreachable: {type(exc).__name__}", engine=self.base_url
            ) from exc
        return _AiohttpResponse(resp)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def __repr__(self) -> str:
        return f"<HTTPTransport {self.base_url}>"
