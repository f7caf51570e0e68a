"""vLLM's KV-event wire format, decoded. Pure: bytes in, plain values out, no I/O.

A message is three ZMQ frames, ``[topic, seq, payload]``:

* ``seq`` is an 8-byte big-endian unsigned integer, 0 for the publisher's first batch
  and one more for each batch after it;
* ``payload`` is msgpack of the batch ``[ts, [event, ...], data_parallel_rank]``
  (older vLLM: ``[ts, [event, ...]]``; a map ``{"ts", "events", "data_parallel_rank"}``
  is accepted too, in case the batch loses ``array_like`` as the events did).

Events come in two shapes, and a batch may mix them:

* tagged maps (vLLM >= 0.26, vllm#42892), ``{"type": "BlockStored", "block_hashes": [...],
  ...}``, optional fields left out when they hold their default;
* tagged arrays (older vLLM): the tag, then the fields in declaration order with trailing
  defaults left out::

    ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size,
                    lora_id, medium, lora_name, extra_keys, group_idx]
    ["BlockRemoved", block_hashes, medium, group_idx]
    ["AllBlocksCleared"]

Also decoded: ``TierBlocksCleared`` (``medium`` required), a newer scoped clear.

Block hashes are ints (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``, the default: the low
64 bits of the block digest) or the raw digest bytes (``=0``). Both are returned as that
same unsigned 64-bit int, ``int.from_bytes(digest, "big") & (2**64 - 1)`` — exactly what
vLLM publishes in int mode, so one index serves engines in either mode. Negative ints
(signed 64-bit readers and writers) are taken modulo 2**64, the same bits read unsigned.

Anything else — another frame count, a seq that is not 8 bytes, bad msgpack, an unknown
tag, a missing or mistyped required field — raises ``MalformedKVMessage``. The whole
message is rejected: its events are not applied one by one, as the caller clears the
engine's blocks for a lost batch anyway. ``MalformedKVMessage`` never leaves the
subscriber (``gantry.engines.kv_events``), which counts and skips the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

MASK64 = (1 << 64) - 1
SEQ_BYTES = 8

# Field order of the older array form (msgspec ``array_like``), after the tag.
_ARRAY_FIELDS: dict[str, tuple[str, ...]] = {
    "BlockStored": (
        "block_hashes",
        "parent_block_hash",
        "token_ids",
        "block_size",
        "lora_id",
        "medium",
        "lora_name",
        "extra_keys",
        "group_idx",
    ),
    "BlockRemoved": ("block_hashes", "medium", "group_idx"),
    "AllBlocksCleared": (),
    "TierBlocksCleared": ("medium", "ownership"),
}


class MalformedKVMessage(ValueError):
    """A message that is not a vLLM KV-event batch; ``seq`` is set when it was readable."""

    def __init__(self, reason: str, seq: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.seq = seq


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    medium: str | None = None  # "GPU", "CPU", "STORAGE"; None (old vLLM) means GPU
    lora_name: str | None = None
    group_idx: int | None = None  # KV cache group; None (old vLLM) means 0


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[int, ...]
    medium: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


@dataclass(frozen=True, slots=True)
class TierBlocksCleared:
    medium: str


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared | TierBlocksCleared


@dataclass(frozen=True, slots=True)
class KVEventBatch:
    topic: str
    seq: int
    ts: float
    events: tuple[KVEvent, ...]
    dp_rank: int | None = None


def on_gpu_prefix(event: BlockStored | BlockRemoved) -> bool:
    """Whether the event is about the engine's own GPU prefix cache (main KV group).

    Offloaded tiers (``medium`` CPU/STORAGE) and other KV groups of hybrid models (a
    sliding-window group can evict a hash the full-attention group still holds) would
    corrupt a per-engine set of GPU block hashes."""
    return event.medium in (None, "GPU") and event.group_idx in (None, 0)


def block_hash(value: object) -> int:
    """One published block hash as vLLM's 64-bit int form (bytes: their low 64 bits)."""
    if isinstance(value, bool):
        raise MalformedKVMessage("a block hash is a boolean")
    if isinstance(value, int):
        return value & MASK64
    if isinstance(value, bytes):
        if not value:
            raise MalformedKVMessage("a block hash is empty bytes")
        return int.from_bytes(value, "big") & MASK64
    raise MalformedKVMessage(f"a block hash is {type(value).__name__}, not int or bytes")


def decode_message(frames: Sequence[bytes]) -> KVEventBatch:
    """Decode one ZMQ multipart message; raises ``MalformedKVMessage``."""
    if len(frames) != 3:
        raise MalformedKVMessage(f"{len(frames)} frames instead of topic, seq, payload")
    topic, seq_frame, payload = frames
    if len(seq_frame) != SEQ_BYTES:
        raise MalformedKVMessage(f"a {len(seq_frame)}-byte sequence number, not 8")
    seq = int.from_bytes(seq_frame, "big")
    try:
        return decode_payload(payload, seq=seq, topic=bytes(topic).decode("utf-8", "replace"))
    except MalformedKVMessage as exc:
        raise MalformedKVMessage(exc.reason, seq) from None


def decode_payload(payload: bytes, *, seq: int = 0, topic: str = "") -> KVEventBatch:
    try:
        batch = msgpack.unpackb(payload, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise MalformedKVMessage(f"payload is not msgpack ({type(exc).__name__})") from None
    if isinstance(batch, list) and len(batch) >= 2:
        ts, events = batch[0], batch[1]
        dp_rank = batch[2] if len(batch) > 2 else None
    elif isinstance(batch, dict) and "ts" in batch and "events" in batch:
        ts, events, dp_rank = batch["ts"], batch["events"], batch.get("data_parallel_rank")
    else:
        raise MalformedKVMessage("payload is not a batch [ts, events, dp_rank]")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise MalformedKVMessage("batch timestamp is not a number")
    if not isinstance(events, list):
        raise MalformedKVMessage("batch events is not a list")
    if dp_rank is not None and not _is_int(dp_rank):
        raise MalformedKVMessage("batch data_parallel_rank is not an int")
    return KVEventBatch(topic, seq, float(ts), tuple(decode_event(e) for e in events), dp_rank)


def decode_event(raw: object) -> KVEvent:
    """One event, tagged map or tagged array."""
    fields = _as_fields(raw)
    tag = fields["type"]
    if tag == "BlockStored":
        token_ids = _required(fields, "token_ids", list)
        if not all(_is_int(t) for t in token_ids):
            raise MalformedKVMessage("BlockStored token_ids holds a non-int")
        block_size = _required(fields, "block_size", int)
        if isinstance(block_size, bool) or block_size <= 0:
            raise MalformedKVMessage("BlockStored block_size is not a positive int")
        parent = fields.get("parent_block_hash")
        return BlockStored(
            block_hashes=_hashes(fields),
            parent_block_hash=None if parent is None else block_hash(parent),
            token_ids=tuple(token_ids),
            block_size=block_size,
            medium=_optional(fields, "medium", str),
            lora_name=_optional(fields, "lora_name", str),
            group_idx=_optional(fields, "group_idx", int),
        )
    if tag == "BlockRemoved":
        return BlockRemoved(
            block_hashes=_hashes(fields),
            medium=_optional(fields, "medium", str),
            group_idx=_optional(fields, "group_idx", int),
        )
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    if tag == "TierBlocksCleared":
        return TierBlocksCleared(_required(fields, "medium", str))
    raise MalformedKVMessage(f"unknown event type {tag!r}")


def _as_fields(raw: object) -> dict[str, Any]:
    if isinstance(raw, dict):
        tag = raw.get("type")
        if not isinstance(tag, str):
            raise MalformedKVMessage("an event map has no string 'type'")
        return raw
    if isinstance(raw, list) and raw and isinstance(raw[0], str):
        names = _ARRAY_FIELDS.get(raw[0])
        if names is None:
            raise MalformedKVMessage(f"unknown event type {raw[0]!r}")
        # Fields past the known ones (newer vLLM) are ignored, as in the map form.
        return {"type": raw[0], **dict(zip(names, raw[1:], strict=False))}
    raise MalformedKVMessage(f"an event is {type(raw).__name__}, not a tagged map or array")


def _hashes(fields: dict[str, Any]) -> tuple[int, ...]:
    return tuple(block_hash(h) for h in _required(fields, "block_hashes", list))


def _required(fields: dict[str, Any], name: str, kind: type) -> Any:
    if name not in fields:
        raise MalformedKVMessage(f"{fields['type']} has no {name}")
    value = fields[name]
    if not isinstance(value, kind):
        raise MalformedKVMessage(f"{fields['type']} {name} is not {kind.__name__}")
    return value


def _optional(fields: dict[str, Any], name: str, kind: type) -> Any:
    value = fields.get(name)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise MalformedKVMessage(f"{fields['type']} {name} is not {kind.__name__}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
