"""Catching up on lost KV-event batches through the engine's replay socket.

vLLM's publisher (``kv_events_config.replay_endpoint``; ``gantry sim
--kv-events-replay``) keeps its last ``buffer_steps`` batches behind a ZMQ ROUTER. A
request ``[b"", start_seq (8 bytes big-endian)]`` from a DEALER is answered with
``[b"", topic, seq, payload]`` per kept batch with ``seq >= start_seq`` (older vLLM:
``[b"", seq, payload]``), then ``[b"", b"", -1 (8 bytes, signed), b""]``.

``fetch_replay`` asks for ``start .. end - 1`` and returns them as ordinary
``[topic, seq, payload]`` messages, or None when the publisher no longer holds all of
them, does not answer within the timeout, or answers nonsense. One DEALER per call:
replays are rare, and a fresh socket never reads a late answer to an earlier request.
"""

from __future__ import annotations

import time

import zmq
import zmq.asyncio

from gantry.engines.kv_wire import SEQ_BYTES

MAX_REPLAY = 10_000  # lost batches asked for at most (vLLM keeps 10,000 by default)
REPLAY_TIMEOUT_S = 2.0  # for the whole answer
END = -1


def wire_seq(frames: list[bytes]) -> int | None:
    """The sequence number of a ``[topic, seq, payload]`` message, if it has one."""
    if len(frames) != 3 or len(frames[1]) != SEQ_BYTES:
        return None
    return int.from_bytes(frames[1], "big")


async def fetch_replay(
    ctx: zmq.asyncio.Context, endpoint: str, start: int, end: int, timeout_s: float
) -> list[list[bytes]] | None:
    """Batches ``start .. end - 1`` from the replay socket at ``endpoint``, in order."""
    want = end - start
    if want <= 0 or want > MAX_REPLAY:
        return None
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    got: list[list[bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        sock.connect(endpoint)
        await sock.send_multipart([b"", start.to_bytes(SEQ_BYTES, "big")])
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not await sock.poll(left * 1000):
                return None
            frames = await sock.recv_multipart()
            if frames and frames[0] == b"":
                frames = frames[1:]  # the ROUTER's envelope delimiter
            if len(frames) == 2:  # older publishers: no topic frame
                frames = [b"", *frames]
            if len(frames) != 3 or len(frames[1]) != SEQ_BYTES:
                return None
            seq = int.from_bytes(frames[1], "big", signed=True)
            if seq == END:
                return got if len(got) == want else None
            if seq < start + len(got):
                continue  # kept from before what was asked for
            if seq != start + len(got):
                return None  # the publisher no longer holds some of them
            if len(got) < want:
                got.append(frames)
    except zmq.ZMQError:
        return None
    finally:
        sock.close(linger=0)
