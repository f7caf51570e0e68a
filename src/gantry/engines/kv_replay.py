"""Catching up on lost KV-event batches through the engine's replay socket.

vLLM's publisher (``kv_events_config.replay_endpoint``; ``gantry sim
--kv-events-replay``) keeps its last ``buffer_steps`` batches behind a ZMQ ROUTER. A
request ``[b"", start_seq (8 bytes big-endian)]`` from a DEALER is answered with
``[b"", topic, seq, payload]`` per kept batch with ``seq >= start_seq`` (older vLLM:
``[b"", seq, payload]``), then ``[b"", b"", -1 (8 bytes, signed), b""]``.

``replay`` asks for ``start .. end - 1`` and hands each batch, as an ordinary
``[topic, seq, payload]`` message, to ``apply`` as soon as it arrives, in order: what is
held is one message, not the whole answer. Its outcome::

    DONE       every batch asked for was applied
    PARTIAL    some were, then one was missing: vLLM's ROUTER drops what exceeds its
               send high-water mark (1,000) when the reader falls behind, so asking
               again from where it stopped can finish the job
    NOT_KEPT   the first batch asked for is no longer kept (or the answer is garbled)
    NO_ANSWER  silence for ``idle_s``, or the whole answer took over ``total_s``

One DEALER per call: replays are rare, and a fresh socket never reads a late answer to
an earlier request. Its receive pipe holds a whole answer (``MAX_REPLAY`` messages of at
most ``max_msg_size`` bytes), so a publisher that drops past its own high-water mark
finds room here while the batches before are applied.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

import zmq
import zmq.asyncio

from gantry.engines.kv_wire import SEQ_BYTES

MAX_REPLAY = 10_000  # lost batches asked for at most (vLLM keeps 10,000 by default)
REPLAY_IDLE_S = 2.0  # silence that ends a replay
REPLAY_TOTAL_S = 30.0  # the whole answer, however steadily it comes
END = -1


class Replay(enum.Enum):
    DONE = "done"
    PARTIAL = "partial"
    NOT_KEPT = "not kept"
    NO_ANSWER = "no answer"


def wire_seq(frames: list[bytes]) -> int | None:
    """The sequence number of a ``[topic, seq, payload]`` message, if it has one."""
    if len(frames) != 3 or len(frames[1]) != SEQ_BYTES:
        return None
    return int.from_bytes(frames[1], "big")


async def replay(
    ctx: zmq.asyncio.Context,
    endpoint: str,
    start: int,
    end: int,
    apply: Callable[[list[bytes]], object],
    *,
    idle_s: float = REPLAY_IDLE_S,
    total_s: float = REPLAY_TOTAL_S,
    max_msg_size: int = 64 << 20,
) -> Replay:
    """Batches ``start .. end - 1`` from the replay socket at ``endpoint`` into ``apply``."""
    if not 0 < end - start <= MAX_REPLAY:
        raise ValueError(f"a replay asks for 1 to {MAX_REPLAY} batches, not {end - start}")
    sock = ctx.socket(zmq.DEALER)
    for opt, value in (
        (zmq.LINGER, 0),
        (zmq.RCVHWM, MAX_REPLAY + 1),
        (zmq.MAXMSGSIZE, max_msg_size),
    ):
        sock.setsockopt(opt, value)
    nxt = start
    deadline = time.monotonic() + total_s
    try:
        sock.connect(endpoint)
        await sock.send_multipart([b"", start.to_bytes(SEQ_BYTES, "big")])
        while nxt < end:
            wait = min(idle_s, deadline - time.monotonic())
            if wait <= 0 or not await sock.poll(wait * 1000):
                return Replay.NO_ANSWER
            frames = _unwrap(await sock.recv_multipart())
            seq = None if frames is None else int.from_bytes(frames[1], "big", signed=True)
            if seq is None or seq == END or seq > nxt:
                return Replay.PARTIAL if nxt > start else Replay.NOT_KEPT
            if seq == nxt:  # (a lower one was kept from before what was asked for)
                assert frames is not None
                apply(frames)
                nxt += 1
        return Replay.DONE
    except zmq.ZMQError:
        return Replay.PARTIAL if nxt > start else Replay.NO_ANSWER
    finally:
        sock.close(linger=0)


def _unwrap(frames: list[bytes]) -> list[bytes] | None:
    """``[topic, seq, payload]`` from one answer message; None if it is not one."""
    if frames and frames[0] == b"":
        frames = frames[1:]  # the ROUTER's envelope delimiter
    if len(frames) == 2:  # older publishers: no topic frame
        frames = [b"", *frames]
    if len(frames) != 3 or len(frames[1]) != SEQ_BYTES:
        return None
    return frames
