"""KV-cache events over ZMQ PUB, in vLLM's wire format.

Each batch is ``[topic, seq (8-byte big-endian), msgpack([ts, [event, ...], dp_rank])]``
with events as tagged maps (vLLM >= 0.26): ``{"type": "BlockStored", ...}``.
"""

from __future__ import annotations

import time
from typing import Any

import msgpack

from gantry.sim.kvcache import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent


def encode_event(ev: KVEvent) -> dict[str, Any]:
    """vllm/distributed/kv_events.py: msgspec structs with ``omit_defaults``, so the
    optional fields appear only when set; one KV-cache group (``group_idx`` 0)."""
    if isinstance(ev, BlockStored):
        out: dict[str, Any] = {
            "type": "BlockStored",
            "block_hashes": ev.block_hashes,
            "parent_block_hash": ev.parent_block_hash,
            "token_ids": ev.token_ids,
            "block_size": ev.block_size,
            "lora_id": None,
            "medium": "GPU",
            "lora_name": None,
        }
        if ev.extra_keys:
            out["extra_keys"] = [list(k) if k is not None else None for k in ev.extra_keys]
        out["group_idx"] = 0
        return out
    if isinstance(ev, BlockRemoved):
        return {
            "type": "BlockRemoved",
            "block_hashes": ev.block_hashes,
            "medium": "GPU",
            "group_idx": 0,
        }
    assert isinstance(ev, AllBlocksCleared)
    return {"type": "AllBlocksCleared"}


def encode_batch(events: list[KVEvent], *, ts: float | None = None, dp_rank: int = 0) -> bytes:
    payload = [ts if ts is not None else time.time(), [encode_event(e) for e in events], dp_rank]
    return bytes(msgpack.packb(payload, use_bin_type=True))


class KVEventPublisher:
    """ZMQ PUB socket; binds when the endpoint has ``*`` (as vLLM), else connects."""

    def __init__(self, endpoint: str, topic: str = "", hwm: int = 100_000) -> None:
        import zmq

        self.endpoint = endpoint
        self.topic = topic
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        if "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://")):
            self._sock.bind(endpoint)
        else:
            self._sock.connect(endpoint)
        self._seq = 0
        self._zmq = zmq

    def publish(self, events: list[KVEvent]) -> None:
        if not events:
            return
        frames = [self.topic.encode(), self._seq.to_bytes(8, "big"), encode_batch(events)]
        try:
            self._sock.send_multipart(frames, flags=self._zmq.NOBLOCK)
        except self._zmq.Again:
            pass  # high-water mark reached: drop, as a PUB socket does
        self._seq += 1

    def config(self) -> dict[str, Any]:
        return {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": self.endpoint,
            "replay_endpoint": None,
            "buffer_steps": 10000,
            "hwm": 100000,
            "max_queue_size": 100000,
            "topic": self.topic,
        }

    def close(self) -> None:
        self._sock.close(linger=0)
