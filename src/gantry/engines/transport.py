"""The narrow seam under all engine I/O.

``EngineTransport.send()`` returns an ``EngineResponse`` as soon as the status line
and headers arrive; the body is read whole (``read()``) or as it comes
(``iter_chunks()``). ``HTTPTransport`` uses a pooled aiohttp session; tests and the
in-process mode can provide their own transport.

Errors name the engine by its configured name, never by URL: their messages can reach
clients (502/503/504 bodies, ``/readyz`` reasons) and an engine's address is internal.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from gantry.errors import EngineTimeout, RetryableEngineError

if TYPE_CHECKING:  # aiohttp is imported when an engine asks for it (~90 ms at start-up)
    import aiohttp


def describe_os_error(exc: BaseException) -> str:
    """A short cause for a failed connection, without the address it failed on.

    ``str()`` of asyncio's connect errors carries the host and port
    ("Connect call failed ('10.0.0.5', 8000)"), so the text is rebuilt from the type.
    """
    if isinstance(exc, ssl.SSLError):  # certificate messages name the host
        return "TLS error"
    if isinstance(exc, socket.gaierror):
        return "host name not resolved"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno).lower()
    return type(exc).__name__


def netloc_of(base_url: str) -> str:
    """``host:port`` of a URL: the name a transport uses when given none."""
    return urlsplit(base_url).netloc or base_url


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
    """HTTP/1.1 to one engine, keep-alive connections pooled per engine.

    ``name`` is how errors refer to the engine (default ``host:port``; the pool passes
    the engine's configured name).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        limit: int = 0,
        name: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name or netloc_of(self.base_url)
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        import aiohttp

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
        import aiohttp

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
            raise EngineTimeout(f"engine {self.name} timed out", engine=self.name) from exc
        except OSError as exc:  # aiohttp's connection errors included
            cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
            raise RetryableEngineError(
                f"engine {self.name} unreachable: {describe_os_error(cause)}", engine=self.name
            ) from exc
        except aiohttp.ClientError as exc:  # str() names the URL: keep only the kind
            raise RetryableEngineError(
                f"engine {self.name} failed: {type(exc).__name__}", engine=self.name
            ) from exc
        return _AiohttpResponse(resp)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def __repr__(self) -> str:
        return f"<HTTPTransport {self.name} {self.base_url}>"
