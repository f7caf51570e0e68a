"""Shared state behind small interfaces: memory by default, Redis or SQL when
configured."""

from gantry.state.idempotency import (
    Claim,
    IdempotencyStore,
    IdemRecord,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
)

__all__ = [
    "Claim",
    "IdemRecord",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "RedisIdempotencyStore",
]
