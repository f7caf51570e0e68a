"""``Idempotency-Key`` handling around one request.

The first request with a key runs; its answer (status, headers, body — for a stream,
the whole SSE byte stream) is recorded as it is sent and stored if it is final (below
500) and small enough. A repeat with the same key and body gets the stored answer
(streams are replayed as streams) with ``idempotent-replayed: true``; a repeat with a
different body gets 422; a concurrent repeat waits for the first and then replays it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable

from gantry.config import IdempotencyConfig
from gantry.errors import ClientError, IdempotencyConflict, IdempotencyInProgress
from gantry.protocol import Message, Send, end_stream, respond, start_stream
from gantry.state import (
    Claim,
    IdempotencyStore,
    IdemRecord,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
)

_MAX_KEY = 255


def make_store(cfg: IdempotencyConfig) -> IdempotencyStore:
    if cfg.store == "redis":
        return RedisIdempotencyStore(cfg.redis_url, cfg.key_prefix)
    return MemoryIdempotencyStore(cfg.max_entries)


class Recorder:
    """Wraps ASGI ``send``: passes every message on and keeps a bounded copy."""

    def __init__(self, send: Send, limit: int) -> None:
        self._send = send
        self._limit = limit
        self.status = 0
        self.headers: tuple[tuple[str, str], ...] = ()
        self.stream = False
        self.parts: list[bytes] = []
        self.size = 0
        self.complete = False

    async def send(self, msg: Message) -> None:
        if msg["type"] == "http.response.start":
            self.status = msg["status"]
            hdrs = [(k.decode(), v.decode()) for k, v in msg.get("headers", [])]
            self.stream = any(
                k == "content-type" and v.startswith("text/event-stream") for k, v in hdrs
            )
            self.headers = tuple(
                (k, v) for k, v in hdrs if k not in ("content-length", "x-request-id")
            )
        elif msg["type"] == "http.response.body":
            body = msg.get("body", b"")
            self.size += len(body)
            if self.size <= self._limit:
                self.parts.append(body)
            if not msg.get("more_body", False):
                self.complete = True
        await self._send(msg)

    def record(self, fingerprint: str) -> IdemRecord | None:
        if not self.complete or self.size > self._limit or self.status >= 500 or not self.status:
            return None
        return IdemRecord(fingerprint, self.status, self.headers, b"".join(self.parts), self.stream)


def check_key(key: str) -> str:
    if not key or len(key) > _MAX_KEY or not key.isprintable():
        raise ClientError(
            f"Idempotency-Key must be 1-{_MAX_KEY} printable characters.", param="idempotency-key"
        )
    return key


def fingerprint(endpoint: str, raw: bytes, scope_id: str = "") -> str:
    return hashlib.sha256(f"{scope_id}\0{endpoint}\0".encode() + raw).hexdigest()


async def replay(rec: IdemRecord, send: Send, headers: list[tuple[bytes, bytes]]) -> None:
    hdrs = [(k.encode(), v.encode()) for k, v in rec.headers if k != "content-type"]
    hdrs += [*headers, (b"idempotent-replayed", b"true")]
    if rec.stream:
        await start_stream(send, rec.status, hdrs)
        await end_stream(send, rec.body)
    else:
        await respond(send, rec.status, rec.body, headers=hdrs)


async def run_once(
    store: IdempotencyStore,
    cfg: IdempotencyConfig,
    key: str,
    fp: str,
    deadline: float,
    send: Send,
    headers: list[tuple[bytes, bytes]],
    run: Callable[[Send], Awaitable[None]],
    on_replay: Callable[[str], None],
) -> None:
    while True:
        state, rec = await store.claim(key, fp, cfg.ttl_s)
        if state is Claim.MISMATCH:
            on_replay("mismatch")
            raise IdempotencyConflict(
                "This Idempotency-Key was already used with a different request body.",
                param="idempotency-key",
            )
        if state is Claim.DONE and rec is not None:
            on_replay("replayed")
            await replay(rec, send, headers)
            return
        if state is Claim.BUSY:
            rec = await store.wait(key, max(0.0, deadline - time.monotonic()))
            if rec is not None:
                on_replay("waited")
                await replay(rec, send, headers)
                return
            if time.monotonic() >= deadline:
                raise IdempotencyInProgress(
                    "A request with this Idempotency-Key is still in progress.",
                    param="idempotency-key",
                )
            continue  # the first one failed and released the key: run it ourselves
        recorder = Recorder(send, cfg.max_body_bytes)
        try:
            await run(recorder.send)
        finally:
            stored = recorder.record(fp)
            if stored is not None:
                await store.complete(key, stored, cfg.ttl_s)
            else:
                await store.release(key)
        return
