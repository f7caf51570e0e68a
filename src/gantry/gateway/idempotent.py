"""``Idempotency-Key`` handling around one request.

The first request with a key runs; its answer (status, headers, body — for a stream,
the whole SSE byte stream) is recorded as it is sent and stored only if it succeeded: a
2xx, complete, without an error inside the stream, and small enough. Failures —
the gateway's or an engine's (a 429, a 5xx, a stream cut after its first token) — are
never stored, so a retry with the same key runs again. A repeat with the same key and
body gets the stored answer (streams are replayed as streams) with
``idempotent-replayed: true``; a repeat with a different body gets 422; a concurrent
repeat waits for the first and then replays it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable

from gantry.config import IdempotencyConfig
from gantry.errors import ClientError, IdempotencyConflict, IdempotencyInProgress
from gantry.gateway.accounting import Record
from gantry.gateway.http import Exchange, Recorder
from gantry.state import (
    Claim,
    IdempotencyStore,
    IdemRecord,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
)

_MAX_KEY = 255
_SKIP = (b"content-length", b"x-request-id", b"transfer-encoding", b"connection")


def make_store(cfg: IdempotencyConfig) -> IdempotencyStore:
    if cfg.store == "redis":
        return RedisIdempotencyStore(cfg.redis_url, cfg.key_prefix)
    return MemoryIdempotencyStore(cfg.max_entries)


def check_key(key: str) -> str:
    if not key or len(key) > _MAX_KEY or not key.isprintable():
        raise ClientError(
            f"Idempotency-Key must be 1-{_MAX_KEY} printable characters.", param="idempotency-key"
        )
    return key


def fingerprint(endpoint: str, raw: bytes, scope_id: str = "") -> str:
    return hashlib.sha256(f"{scope_id}\0{endpoint}\0".encode() + raw).hexdigest()


def storable(r: Recorder, rec: Record, fp: str) -> IdemRecord | None:
    """The answer to keep, or None when it must not be replayed."""
    if not r.kept or not 200 <= r.status < 300 or rec.error is not None or rec.gone:
        return None
    headers = tuple(
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in r.headers if k not in _SKIP
    )
    return IdemRecord(fp, r.status, headers, b"".join(r.parts), r.stream)


async def replay(rec: IdemRecord, x: Exchange) -> None:
    hdrs = [(k.encode(), v.encode()) for k, v in rec.headers if k.lower() != "x-request-id"]
    hdrs.append((b"idempotent-replayed", b"true"))
    if rec.stream:
        x.start_stream(rec.status, hdrs)
        x.end_stream(rec.body)
    else:
        x.reply(rec.status, rec.body, headers=hdrs)


async def run_once(
    store: IdempotencyStore,
    cfg: IdempotencyConfig,
    key: str,
    fp: str,
    deadline: float,
    x: Exchange,
    rec: Record,
    run: Callable[[], Awaitable[None]],
    on_replay: Callable[[str], None],
) -> None:
    while True:
        state, stored = await store.claim(key, fp, cfg.ttl_s)
        if state is Claim.MISMATCH:
            on_replay("mismatch")
            raise IdempotencyConflict(
                "This Idempotency-Key was already used with a different request body.",
                param="idempotency-key",
            )
        if state is Claim.DONE and stored is not None:
            on_replay("replayed")
            rec.status = stored.status
            await replay(stored, x)
            return
        if state is Claim.BUSY:
            stored = await store.wait(key, max(0.0, deadline - time.monotonic()))
            if stored is not None:
                on_replay("waited")
                rec.status = stored.status
                await replay(stored, x)
                return
            if time.monotonic() >= deadline:
                raise IdempotencyInProgress(
                    "A request with this Idempotency-Key is still in progress.",
                    param="idempotency-key",
                )
            continue  # the first one failed and released the key: run it ourselves
        recorder = x.recorder = Recorder(cfg.max_body_bytes)
        answer: IdemRecord | None = None
        try:
            await run()
            answer = storable(recorder, rec, fp)
        finally:
            x.recorder = None
            if answer is not None:
                await store.complete(key, answer, cfg.ttl_s)
            else:
                await store.release(key)
        return
