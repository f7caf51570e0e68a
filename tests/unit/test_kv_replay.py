"""The KV-event replay socket, both ends, over real ZMQ sockets on loopback: the
simulator's publisher (vLLM's ROUTER protocol, its ring) and the gateway's ``replay``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import zmq
import zmq.asyncio

from gantry.engines.kv_replay import MAX_REPLAY, Replay, replay
from gantry.engines.kv_wire import decode_message
from gantry.netutil import free_port
from gantry.sim import kvevents
from gantry.sim.kvcache import BlockStored
from gantry.sim.kvevents import KVEventPublisher
from tests.helpers import wait_until

END = [b"", b"", (-1).to_bytes(8, "big", signed=True), b""]


def stored(*hashes: int) -> list[BlockStored]:
    return [BlockStored(list(hashes), None, list(range(16 * len(hashes))), 16)]


def long_prompt(seq: int, tokens: int) -> list[BlockStored]:
    """A batch of ``tokens`` token ids of 5 bytes each in msgpack: big enough that a few
    thousand fill the sockets' pipes and the kernel's buffers on loopback."""
    ids = list(range(70_000, 70_000 + tokens))
    return [BlockStored([seq], None, ids, 16)]


def seq8(n: int) -> bytes:
    return n.to_bytes(8, "big")


@pytest.fixture
def ctx() -> Iterator[zmq.asyncio.Context]:
    c = zmq.asyncio.Context()
    yield c
    c.destroy(linger=0)


def publisher(
    buffer_steps: int = 3, published: int = 5, tokens: int = 0
) -> tuple[KVEventPublisher, str]:
    rport = free_port()
    pub = KVEventPublisher(
        f"tcp://*:{free_port()}",
        "kv@",
        replay_endpoint=f"tcp://*:{rport}",
        buffer_steps=buffer_steps,
    )
    for i in range(published):
        pub.publish(long_prompt(i, tokens) if tokens else stored(100 + i))
    return pub, f"tcp://127.0.0.1:{rport}"


async def recv(sock: zmq.asyncio.Socket) -> list[bytes]:
    return await asyncio.wait_for(sock.recv_multipart(), 20)  # bounds a broken run


# -- the simulator's replay socket -------------------------------------------------------
def test_the_ring_keeps_the_last_buffer_steps_batches():
    pub, _ = publisher(buffer_steps=3, published=5)
    try:
        assert [seq for seq, _ in pub.replay_from(0)] == [2, 3, 4]
        assert [seq for seq, _ in pub.replay_from(4)] == [4]
        assert pub.config()["replay_endpoint"].startswith("tcp://*:")
        assert pub.config()["buffer_steps"] == 3
        assert "ring=3/3" in repr(pub)
    finally:
        pub.close()
    with pytest.raises(ValueError, match="buffer_steps must be at least 1"):
        KVEventPublisher(f"tcp://*:{free_port()}", buffer_steps=0)
    plain = KVEventPublisher(f"tcp://*:{free_port()}")  # no replay socket: nothing kept
    try:
        plain.publish(stored(1))
        assert plain.replay_from(0) == [] and plain.config()["replay_endpoint"] is None
    finally:
        plain.close()


async def test_a_request_gets_the_kept_batches_then_the_end_marker(ctx):
    """vllm/distributed/kv_events.py ZmqEventPublisher: [b"", start] from a DEALER gets
    [b"", topic, seq, payload] per kept batch from ``start``, then [b"", b"", -1, b""]."""
    pub, ep = publisher()
    dealer = ctx.socket(zmq.DEALER)
    try:
        dealer.connect(ep)
        await dealer.send_multipart([b"", seq8(3)])
        first, second = await recv(dealer), await recv(dealer)
        assert first[:3] == [b"", b"kv@", seq8(3)] and second[:3] == [b"", b"kv@", seq8(4)]
        assert list(decode_message(first[1:]).events[0].block_hashes) == [103]
        assert await recv(dealer) == END
        # Older than the ring: what is kept, from its oldest (the client sees the hole).
        await dealer.send_multipart([b"", seq8(0)])
        assert [(await recv(dealer))[2] for _ in range(3)] == [seq8(2), seq8(3), seq8(4)]
        assert await recv(dealer) == END
        # Past the newest: only the end marker.
        await dealer.send_multipart([b"", seq8(99)])
        assert await recv(dealer) == END
    finally:
        dealer.close(linger=0)
        pub.close()


async def test_a_req_socket_is_answered_too(ctx):
    pub, ep = publisher()
    req = ctx.socket(zmq.REQ)  # REQ adds the empty delimiter itself
    try:
        req.connect(ep)
        await req.send(seq8(4))
        assert (await recv(req))[:2] == [b"kv@", seq8(4)]
    finally:
        req.close(linger=0)
        pub.close()


async def test_junk_requests_are_ignored_and_the_socket_keeps_answering(ctx, caplog):
    pub, ep = publisher()
    dealer = ctx.socket(zmq.DEALER)
    try:
        dealer.connect(ep)
        await dealer.send_multipart([b"", b"not 8 bytes"])
        await dealer.send_multipart([b"", seq8(1), b"one frame too many"])
        await dealer.send_multipart([b"", seq8(4)])
        assert (await recv(dealer))[2] == seq8(4)  # the first answer is the good request's
        assert await recv(dealer) == END
        assert caplog.text.count("ignored a request") == 2
    finally:
        dealer.close(linger=0)
        pub.close()


async def test_a_reader_that_falls_behind_gets_the_whole_ring(ctx):
    """vLLM's ROUTER drops past 1,000 queued messages (end marker too) when the reader
    is slow; this one keeps a whole ring in the pipe. The reader here reads nothing
    until the publisher has sent its entire answer."""
    pub, ep = publisher(buffer_steps=3_000, published=3_000, tokens=6_000)  # 90 MB
    dealer = ctx.socket(zmq.DEALER)
    try:
        dealer.connect(ep)
        await dealer.send_multipart([b"", seq8(0)])
        await asyncio.to_thread(wait_until, lambda: pub.replies == 1, what="the whole answer")
        seqs = [int.from_bytes((await recv(dealer))[2], "big") for _ in range(3_000)]
        assert seqs == list(range(3_000))
        assert await recv(dealer) == END
    finally:
        dealer.close(linger=0)
        pub.close()


async def test_a_client_that_goes_away_or_stalls_does_not_stop_the_socket(ctx, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=kvevents.__name__)
    monkeypatch.setattr(kvevents, "REPLAY_SEND_TIMEOUT_MS", 50)  # read when the socket is made
    pub, ep = publisher(buffer_steps=3, published=5, tokens=250_000)  # 1.25 MB a batch
    gone, stalled, fine = (ctx.socket(zmq.DEALER) for _ in range(3))
    try:
        gone.connect(ep)
        await gone.send_multipart([b"", seq8(0)])
        gone.close(linger=0)  # its answer has nowhere to go
        stalled.setsockopt(zmq.RCVHWM, 1)
        stalled.connect(ep)
        for _ in range(10):  # 30 batches asked for, never read: more than pipes and kernel
            await stalled.send_multipart([b"", seq8(0)])
        await asyncio.to_thread(
            wait_until, lambda: "reply abandoned" in caplog.text, what="a stalled reply"
        )
        fine.connect(ep)
        await fine.send_multipart([b"", seq8(4)])
        assert (await recv(fine))[2] == seq8(4) and await recv(fine) == END
    finally:
        for sock in (stalled, fine):
            sock.close(linger=0)
        pub.close()


# -- the gateway's replay() ----------------------------------------------------------------
@pytest.fixture
async def router(ctx) -> AsyncIterator[tuple[zmq.asyncio.Socket, str]]:
    """A bare ROUTER on loopback for scripted answers."""
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(linger=0)


async def answer(sock: zmq.asyncio.Socket, *messages: list[bytes]) -> int:
    """Take one request, send ``messages`` to its sender; the requested start seq."""
    ident, _, start = await recv(sock)
    for message in messages:
        await sock.send_multipart([ident, b"", *message])
    return int.from_bytes(start, "big")


def batch(seq: int, *, topic: bool = True) -> list[bytes]:
    return [*([b"kv@"] if topic else []), seq8(seq), kvevents.encode_batch(stored(seq))]


async def test_replay_applies_the_batches_asked_for_in_order(ctx, router):
    sock, ep = router
    got: list[list[bytes]] = []
    # a publisher answers from start with all it keeps (7 and 8 are past what is asked)
    server = asyncio.create_task(answer(sock, *(batch(s) for s in range(3, 9)), END[1:]))
    assert await replay(ctx, ep, 3, 7, got.append) is Replay.DONE
    assert await server == 3
    assert [decode_message(m).seq for m in got] == [3, 4, 5, 6]
    assert got[0][0] == b"kv@"


async def test_replay_reads_older_publishers_without_a_topic_frame(ctx, router):
    sock, ep = router
    got: list[list[bytes]] = []
    server = asyncio.create_task(
        answer(sock, batch(2, topic=False), batch(3, topic=False), [seq8(2**64 - 1), b""])
    )
    assert await replay(ctx, ep, 2, 4, got.append) is Replay.DONE
    await server
    assert [decode_message(m).seq for m in got] == [2, 3]


@pytest.mark.parametrize(
    ("messages", "outcome", "applied"),
    [
        ([batch(5), batch(6), END[1:]], Replay.NOT_KEPT, []),  # 3 and 4 are gone
        ([END[1:]], Replay.NOT_KEPT, []),  # nothing kept
        ([batch(3), batch(5), END[1:]], Replay.PARTIAL, [3]),  # 4 dropped on the way
        ([batch(3), END[1:]], Replay.PARTIAL, [3]),  # the end came early
        ([batch(1), batch(2), batch(3), batch(4)], Replay.DONE, [3, 4]),  # older ones skipped
        ([[b"garbage"]], Replay.NOT_KEPT, []),
        ([batch(3), [b"kv@", b"short", b"x"]], Replay.PARTIAL, [3]),
    ],
)
async def test_replay_outcomes(ctx, router, messages, outcome, applied):
    sock, ep = router
    got: list[list[bytes]] = []
    server = asyncio.create_task(answer(sock, *messages))
    assert await replay(ctx, ep, 3, 5, got.append) is outcome
    await server
    assert [decode_message(m).seq for m in got] == applied


async def test_replay_gives_up_on_silence(ctx, router):
    sock, ep = router
    got: list[list[bytes]] = []
    server = asyncio.create_task(answer(sock, batch(3)))  # then nothing: no 4, no end
    assert await replay(ctx, ep, 3, 5, got.append, idle_s=0.2) is Replay.NO_ANSWER
    await server
    assert len(got) == 1
    # nobody there at all
    nobody = f"tcp://127.0.0.1:{free_port()}"
    assert await replay(ctx, nobody, 3, 5, got.append, idle_s=0.2) is Replay.NO_ANSWER


async def test_replay_refuses_an_empty_or_oversized_range(ctx):
    for start, end in ((5, 5), (5, 4), (0, MAX_REPLAY + 1)):
        with pytest.raises(ValueError, match="a replay asks for"):
            await replay(ctx, "tcp://127.0.0.1:1", start, end, print)
