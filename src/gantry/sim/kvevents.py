"""KV-cache events over ZMQ PUB, in vLLM's wire format.

Each batch is ``[topic, seq (8-byte big-endian), msgpack([ts, [event, ...], dp_rank])]``
with events as tagged maps (vLLM >= 0.26): ``{"type": "BlockStored", ...}``.

With a replay endpoint (vLLM's ``replay_endpoint``), the last ``buffer_steps`` batches
are kept and a ZMQ ROUTER socket answers catch-up requests as
``vllm/distributed/kv_events.py`` ``ZmqEventPublisher`` does: a request
``[b"", start_seq (8 bytes)]`` gets ``[b"", topic, seq, payload]`` for every kept batch
with ``seq >= start_seq``, then the end marker ``[b"", b"", -1 (8 bytes, signed), b""]``.

Unlike vLLM's ROUTER (default send high-water mark 1,000, past which ZMQ drops without
a word, the end marker too), this one holds a whole ring per client and, past that,
waits up to ``REPLAY_SEND_TIMEOUT_MS`` for a slow reader before giving that reply up:
measured: a client that paused 2 s before reading a 10,000-batch ring (64 blocks a
batch) got 3,500 of its 10,001 messages from the default socket.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
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


log = logging.getLogger(__name__)

END_SEQ = (-1).to_bytes(8, "big", signed=True)
REPLAY_SEND_TIMEOUT_MS = 2_000  # a reader this slow loses its reply (and asks again)


def _binds(endpoint: str) -> bool:
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class KVEventPublisher:
    """ZMQ PUB socket; binds when the endpoint has ``*`` (as vLLM), else connects. With
    ``replay_endpoint``, a ROUTER socket served by a thread of its own answers replay
    requests from a ring of the last ``buffer_steps`` batches; ``close`` stops both."""

    def __init__(
        self,
        endpoint: str,
        topic: str = "",
        hwm: int = 100_000,
        *,
        replay_endpoint: str | None = None,
        buffer_steps: int = 10_000,
    ) -> None:
        import zmq

        if buffer_steps < 1:
            raise ValueError(f"buffer_steps must be at least 1, not {buffer_steps}")
        self.endpoint = endpoint
        self.topic = topic
        self.replay_endpoint = replay_endpoint
        self.buffer_steps = buffer_steps
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        if _binds(endpoint):
            self._sock.bind(endpoint)
        else:
            self._sock.connect(endpoint)
        self._seq = 0
        self._zmq = zmq
        self._ring: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.replies = 0  # replay answers sent whole (end marker included)
        if replay_endpoint is not None:
            router = self._ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.SNDHWM, buffer_steps + 1)  # a whole ring and the end
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # past it: wait, or fail; not drop
            router.setsockopt(zmq.SNDTIMEO, REPLAY_SEND_TIMEOUT_MS)
            try:
                if _binds(replay_endpoint):
                    router.bind(replay_endpoint)
                else:
                    router.connect(replay_endpoint)
            except zmq.ZMQError:
                router.close(linger=0)
                self._sock.close(linger=0)
                raise
            self._thread = threading.Thread(
                target=self._serve_replay, args=(router,), name="kv-replay", daemon=True
            )
            self._thread.start()

    def publish(self, events: list[KVEvent]) -> None:
        if not events:
            return
        payload = encode_batch(events)
        if self._thread is not None:
            with self._lock:
                self._ring.append((self._seq, payload))
        self._send([self.topic.encode(), self._seq.to_bytes(8, "big"), payload])
        self._seq += 1

    def _send(self, frames: list[bytes]) -> None:
        try:
            self._sock.send_multipart(frames, flags=self._zmq.NOBLOCK)
        except self._zmq.Again:
            pass  # high-water mark reached: drop, as a PUB socket does

    def replay_from(self, start: int) -> list[tuple[int, bytes]]:
        """The kept batches with ``seq >= start``, oldest first."""
        with self._lock:
            return [(seq, payload) for seq, payload in self._ring if seq >= start]

    def _serve_replay(self, router: Any) -> None:
        zmq = self._zmq
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        topic = self.topic.encode()
        try:
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                frames = router.recv_multipart()
                if len(frames) != 3 or len(frames[2]) != 8:
                    log.warning("KV events replay: ignored a request of %d frames", len(frames))
                    continue
                try:
                    self._answer(router, frames[0], int.from_bytes(frames[2], "big"), topic)
                except zmq.ZMQError as exc:  # zmq.Again included
                    if exc.errno not in (zmq.EAGAIN, zmq.EHOSTUNREACH):
                        raise
                    # That client is too slow or gone: its reply is abandoned, not others'.
                    log.info("KV events replay: a reply abandoned (%s)", exc)
        except zmq.ZMQError as exc:
            if not self._stop.is_set():
                log.warning("KV events replay socket stopped: %s", exc)
        finally:
            router.close(linger=0)

    def _answer(self, router: Any, ident: bytes, start: int, topic: bytes) -> None:
        for seq, payload in self.replay_from(start):
            if self._stop.is_set():
                return  # closing: the client times out and treats the gap as lost
            router.send_multipart([ident, b"", topic, seq.to_bytes(8, "big"), payload])
        router.send_multipart([ident, b"", b"", END_SEQ, b""])
        self.replies += 1

    def config(self) -> dict[str, Any]:
        return {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": self.endpoint,
            "replay_endpoint": self.replay_endpoint,
            "buffer_steps": self.buffer_steps,
            "hwm": 100000,
            "max_queue_size": 100000,
            "topic": self.topic,
        }

    def __repr__(self) -> str:
        replay = f" replay={self.replay_endpoint} ring={len(self._ring)}/{self.buffer_steps}"
        return (
            f"<KVEventPublisher {self.endpoint} seq={self._seq}"
            f"{replay if self._thread is not None else ''} replies={self.replies}>"
        )

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._sock.close(linger=0)
