"""KV-event subscriber against real publishers: the simulator, and a raw ZMQ socket that
misbehaves on purpose (lost batches, a restart, junk, going away and coming back)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx
import msgpack
import zmq
import zmq.asyncio

from gantry.engines import kv_events
from gantry.engines.kv_events import KVEventHub, KVEventSubscriber
from gantry.engines.kv_replay import Replay, replay
from gantry.engines.kv_wire import decode_message
from gantry.netutil import free_port
from gantry.sim.kvcache import BlockStored, block_hashes, event_hash
from gantry.sim.kvevents import KVEventPublisher
from tests.helpers import ManualClock as Clock
from tests.helpers import sim


class RecordingSink:
    def __init__(self) -> None:
        self.added: dict[str, list[int]] = {}  # every hash ever added, in order
        self.blocks: dict[str, set[int]] = {}
        self.clears: Counter[str] = Counter()

    def add(self, engine: str, hashes: Iterable[int]) -> None:
        hashes = list(hashes)
        self.added.setdefault(engine, []).extend(hashes)
        self.blocks.setdefault(engine, set()).update(hashes)

    def remove(self, engine: str, hashes: Iterable[int]) -> None:
        self.blocks.setdefault(engine, set()).difference_update(hashes)

    def clear(self, engine: str) -> None:
        self.clears[engine] += 1
        self.blocks.pop(engine, None)


async def until(predicate: Callable[[], object], what: str, within: float = 20.0) -> None:
    """Wait for a condition; ``within`` only bounds a broken run."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {within:g} s")
        await asyncio.sleep(0.01)


# -- the simulator ----------------------------------------------------------------------
async def test_blocks_the_simulator_caches_reach_the_sink(tmp_path: Path):
    kv_port = free_port()
    sink, counts = RecordingSink(), Counter[str]()
    with sim(tmp_path, "--profile", "instant", "--kv-events", f"tcp://*:{kv_port}") as engine:
        async with (
            httpx.AsyncClient(base_url=engine.url, timeout=30) as http,
            KVEventSubscriber(
                "e0",
                f"tcp://127.0.0.1:{kv_port}",
                sink,
                on_event=lambda e, k: counts.update([k]),
            ) as sub,
        ):
            model = (await http.get("/v1/models")).json()["data"][0]["id"]

            async def complete(prompt: str) -> None:
                body = {"model": model, "prompt": prompt, "max_tokens": 1}
                r = await http.post("/v1/completions", json=body)
                assert r.status_code == 200, r.text

            await until(lambda: sub.connected, "the subscriber connecting")
            # ZMQ's slow joiner: until the subscription reaches the publisher, batches are
            # dropped. Warm up with fresh prompts until one arrives.
            warm = 0
            while not counts["stored"]:
                warm += 1
                await complete(f"warm-up {warm} " + "lorem ipsum dolor sit amet " * 8)
                try:
                    await until(lambda: counts["stored"], "a warm-up batch", within=2)
                except TimeoutError:
                    assert warm < 10, "no KV event ever arrived"

            prompt = "The quick brown fox jumps over the lazy dog. " * 12
            tokens = (await http.post("/tokenize", json={"prompt": prompt})).json()["tokens"]
            expected = [event_hash(d) for d in block_hashes(tokens, 16)]
            assert len(expected) >= 4
            before = len(sink.added["e0"])
            await complete(prompt)
            await until(
                lambda: set(expected) <= set(sink.added["e0"][before:]), "the prompt's blocks"
            )
            # Stored in order, chained from the first block: exactly the prompt's hashes.
            new = sink.added["e0"][before:]
            assert new[: len(expected)] == expected
            assert sink.clears["e0"] == 0 and counts["gap"] == counts["malformed"] == 0
            # It joined late only if the warm-up lost the first batch; either way in sync.
            assert sub.last_seq is not None and sub.last_seq >= 1


async def test_the_simulators_replay_socket_holds_what_it_cached(tmp_path: Path):
    """No subscriber at all: the ring keeps every batch, so a replay from 0 returns the
    first request's blocks (and nothing is lost to ZMQ's slow joiner)."""
    kv_port, replay_port = free_port(), free_port()
    with sim(
        tmp_path,
        "--profile",
        "instant",
        "--kv-events",
        f"tcp://*:{kv_port}",
        "--kv-events-replay",
        f"tcp://*:{replay_port}",
        "--kv-events-buffer-steps",
        "50",
    ) as engine:
        ctx = zmq.asyncio.Context()
        try:
            async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:
                sources = (await http.get("/kv_event_sources")).json()["0"]
                assert sources["replay_endpoint"] == f"tcp://*:{replay_port}"
                assert sources["buffer_steps"] == 50
                model = (await http.get("/v1/models")).json()["data"][0]["id"]
                prompt = "The quick brown fox jumps over the lazy dog. " * 12
                tokens = (await http.post("/tokenize", json={"prompt": prompt})).json()["tokens"]
                body = {"model": model, "prompt": prompt, "max_tokens": 1}
                assert (await http.post("/v1/completions", json=body)).status_code == 200
            got: list[list[bytes]] = []
            ep = f"tcp://127.0.0.1:{replay_port}"
            assert await replay(ctx, ep, 0, 1, got.append) is Replay.DONE
            first = decode_message(got[0])
            hashes = [h for ev in first.events for h in getattr(ev, "block_hashes", ())]
            assert hashes[:4] == [event_hash(d) for d in block_hashes(tokens, 16)][:4]
        finally:
            ctx.term()


# -- a raw publisher --------------------------------------------------------------------
def batch(seq: int, hashes: list[int]) -> list[bytes]:
    stored = {
        "type": "BlockStored",
        "block_hashes": hashes,
        "parent_block_hash": None,
        "token_ids": list(range(16 * len(hashes))),
        "block_size": 16,
    }
    return [b"kv@e0", seq.to_bytes(8, "big"), msgpack.packb([time.time(), [stored], 0])]


async def bind_publisher(ctx: zmq.asyncio.Context, port: int) -> zmq.asyncio.Socket:
    # XPUB sends like PUB and also hands over subscriptions: waiting for one is waiting
    # exactly until the subscriber has joined (no slow-joiner loss after that).
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, even one already held
    pub.bind(f"tcp://127.0.0.1:{port}")
    return pub


async def joined(pub: zmq.asyncio.Socket) -> None:
    while True:  # skip the unsubscription of a subscriber that left
        msg = await asyncio.wait_for(pub.recv(), timeout=20)
        if msg[:1] == b"\x01":
            assert msg == b"\x01kv@"  # subscribed to the topic prefix
            return


async def test_gap_restart_junk_and_a_publisher_that_goes_away():
    port, clock = free_port(), Clock()
    sink, counts = RecordingSink(), Counter[str]()
    ctx = zmq.asyncio.Context()
    pub = await bind_publisher(ctx, port)
    try:
        async with KVEventHub(
            sink,
            {"e0": f"tcp://127.0.0.1:{port}"},
            topic="kv@",
            recovery_s=30.0,
            on_event=lambda e, k: counts.update([k]),
            clock=clock,
        ) as hub:
            sub = hub.subscriber("e0")
            assert sub is not None
            await joined(pub)
            await until(lambda: counts["up"] == 1, "up")
            assert hub.degraded("e0")  # connected, nothing received yet

            # A fresh publisher starts at 0: the index is complete, trusted at once.
            await pub.send_multipart(batch(0, [1, 2]))
            await until(lambda: sink.blocks.get("e0") == {1, 2}, "seq 0 applied")
            assert not hub.degraded("e0")
            await pub.send_multipart([b"other-topic", (1).to_bytes(8, "big"), b"junk"])
            await pub.send_multipart(batch(1, [3]))
            await until(lambda: counts["stored"] == 2, "seq 1 applied")
            assert not hub.degraded("e0") and counts["malformed"] == 0  # filtered by topic

            # Lost batches 2..4.
            await pub.send_multipart(batch(5, [4]))
            await until(lambda: counts["gap"] == 1, "the gap")
            assert sink.blocks["e0"] == {4} and hub.degraded("e0")
            assert sub.degraded_until == clock.now + 30

            # The index rebuilds; recovery_s later it is trusted again.
            clock.now += 30
            await pub.send_multipart(batch(6, [5]))
            await until(lambda: counts["stored"] == 4, "seq 6 applied")
            assert not hub.degraded("e0") and sink.blocks["e0"] == {4, 5}

            # The publisher restarted.
            await pub.send_multipart(batch(0, [6]))
            await until(lambda: counts["restart"] == 1, "the restart")
            assert sink.blocks["e0"] == {6} and hub.degraded("e0")
            clock.now += 30

            # Junk: wrong frame count, a bad payload with a readable seq (lost batch 1).
            await pub.send_multipart([b"kv@e0", b"only two"])
            await pub.send_multipart([b"kv@e0", (1).to_bytes(8, "big"), b"\xc1"])
            await until(lambda: counts["malformed"] == 2, "two malformed messages")
            assert hub.degraded("e0") and "e0" not in sink.blocks
            await pub.send_multipart(batch(2, [7]))  # no gap: seq 1 was seen, unreadable
            await until(lambda: counts["stored"] == 6, "seq 2 applied")
            assert counts["gap"] == 1 and hub.degraded("e0")
            clock.now += 30

            # The publisher goes away: ZMQ would reconnect silently; the monitor tells.
            pub.close(linger=0)
            await until(lambda: counts["down"] == 1, "down")
            assert "e0" not in sink.blocks and hub.degraded("e0")
            assert sub.degraded_until == float("inf")
            pub = await bind_publisher(ctx, port)  # back on the same port, an empty cache
            await joined(pub)
            await until(lambda: counts["up"] == 2, "up again")
            assert hub.degraded("e0")  # until a batch arrives
            await pub.send_multipart(batch(0, [8]))
            await until(lambda: sink.blocks.get("e0") == {8}, "the new stream applied")
            assert not hub.degraded("e0")
            assert counts == Counter(stored=7, gap=1, restart=1, malformed=2, down=1, up=2)

            # Runtime membership: removal drops the engine's blocks.
            await hub.remove_engine("e0")
            assert hub.degraded("e0") and "e0" not in sink.blocks and hub.engines == {}
            await hub.add_engine("e0", f"tcp://127.0.0.1:{port}", topic="kv@")
            await joined(pub)
            await until(lambda: counts["up"] == 3, "the new subscriber connected")
            # It joins a running stream: blocks cached before seq 1 are unknown to it.
            await pub.send_multipart(batch(1, [9]))
            await until(lambda: sink.blocks.get("e0") == {9}, "seq 1 applied")
            assert hub.degraded("e0") and counts["gap"] == 1
            clock.now += 30
            assert not hub.degraded("e0")
    finally:
        pub.close(linger=0)
        ctx.term()


async def test_a_failing_sink_stops_the_subscriber_degraded(caplog):
    class FailingSink(RecordingSink):
        def add(self, engine: str, hashes: Iterable[int]) -> None:
            raise RuntimeError("index bug")

    port, sink = free_port(), FailingSink()
    ctx = zmq.asyncio.Context()
    pub = await bind_publisher(ctx, port)
    try:
        async with KVEventSubscriber("e0", f"tcp://127.0.0.1:{port}", sink, topic="kv@") as sub:
            await joined(pub)
            await pub.send_multipart(batch(0, [1]))
            await until(lambda: sink.clears["e0"], "the subscriber giving up")
            assert sub.degraded and sub.degraded_until == float("inf") and sub.connected
            assert "subscriber stopped" in caplog.text and "index bug" in caplog.text
    finally:
        pub.close(linger=0)
        ctx.term()


# -- the replay socket ----------------------------------------------------------------------
def stored(*hashes: int) -> list[BlockStored]:
    return [BlockStored(list(hashes), None, list(range(16 * len(hashes))), 16)]


async def test_a_lost_batch_is_replayed_not_cleared():
    port, rport, clock = free_port(), free_port(), Clock()
    sink, counts = RecordingSink(), Counter[str]()
    pub = KVEventPublisher(f"tcp://*:{port}", "kv@", replay_endpoint=f"tcp://*:{rport}")
    try:
        async with KVEventHub(
            sink,
            topic="kv@",
            recovery_s=30.0,
            on_event=lambda e, k: counts.update([k]),
            clock=clock,
        ) as hub:
            await hub.add_engine("e0", f"tcp://127.0.0.1:{port}", replay=f"tcp://127.0.0.1:{rport}")
            sub = hub.subscriber("e0")
            assert sub is not None

            def heard() -> bool:  # PUB drops what it sends before the subscription lands
                if sub.last_seq is None:
                    pub.publish(stored(1))
                return sub.last_seq is not None

            await until(heard, "a batch through to the subscriber")
            clock.now += 30  # past the recovery of joining late
            assert not hub.degraded("e0")
            before = sub.last_seq
            sent = pub._send
            pub._send = lambda frames: None  # the network loses the next batch
            pub.publish(stored(2))
            pub._send = sent
            pub.publish(stored(3))
            await until(lambda: counts["replayed"] == 1, "the replay")
            assert sub.last_seq == before + 2
            assert {2, 3} <= sink.blocks["e0"] and sink.clears["e0"] == 0
            assert counts["gap"] == 0 and not hub.degraded("e0")

            # A publisher without the lost batches any more: the gap as before.
            pub._send = lambda frames: None
            pub.publish(stored(4))
            pub._send = sent
            with pub._lock:
                pub._ring.clear()
            pub.publish(stored(5))
            await until(lambda: counts["gap"] == 1, "the gap")
            assert counts["replay_failed"] == 1 and sink.clears["e0"] == 1
            assert hub.degraded("e0")
    finally:
        pub.close()


async def test_a_replay_asks_again_when_cut_short_and_backs_off_after_silence(monkeypatch):
    """A scripted engine: a raw publisher and a replay socket answering by hand."""
    monkeypatch.setattr(kv_events, "REPLAY_IDLE_S", 0.3)
    port, clock = free_port(), Clock()
    sink, counts = RecordingSink(), Counter[str]()
    ctx = zmq.asyncio.Context()
    pub = await bind_publisher(ctx, port)
    router = ctx.socket(zmq.ROUTER)
    rport = router.bind_to_random_port("tcp://127.0.0.1")
    end = [b"", b"", (-1).to_bytes(8, "big", signed=True), b""]

    async def request() -> tuple[bytes, int]:
        ident, _, start = await asyncio.wait_for(router.recv_multipart(), 20)
        return ident, int.from_bytes(start, "big")

    async def answer(ident: bytes, *messages: list[bytes]) -> None:
        for message in messages:
            await router.send_multipart([ident, b"", *message])

    try:
        async with KVEventHub(
            sink, topic="kv@", on_event=lambda e, k: counts.update([k]), clock=clock
        ) as hub:
            await hub.add_engine("e0", f"tcp://127.0.0.1:{port}", replay=f"tcp://127.0.0.1:{rport}")
            await joined(pub)
            await pub.send_multipart(batch(0, [1]))
            await until(lambda: sink.blocks.get("e0") == {1}, "seq 0 applied")

            # Lost 1..3. The first answer loses 2 on the way (as vLLM's ROUTER does past
            # its high-water mark); the subscriber asks again from 2 and gets the rest.
            await pub.send_multipart(batch(4, [5]))
            ident, start = await request()
            assert start == 1
            await answer(ident, batch(1, [2]), batch(3, [4]), end)
            ident, start = await request()
            assert start == 2
            await answer(ident, batch(2, [3]), batch(3, [4]), batch(4, [5]), end)
            await until(lambda: counts["replayed"] == 1, "the replay")
            assert sink.blocks["e0"] == {1, 2, 3, 4, 5} and sink.clears["e0"] == 0
            assert counts["gap"] == 0 and not hub.degraded("e0")

            # Lost 5..6 and the replay socket says nothing: the gap as without one.
            await pub.send_multipart(batch(7, [8]))
            await request()  # never answered
            await until(lambda: counts["gap"] == 1, "the gap")
            assert counts["replay_failed"] == 1 and sink.clears["e0"] == 1
            # For the next 30 s a gap is not asked about.
            await pub.send_multipart(batch(9, [10]))
            await until(lambda: counts["gap"] == 2, "the second gap")
            assert not await router.poll(0) and counts["replay_failed"] == 1
            clock.now += 30
            await pub.send_multipart(batch(11, [12]))
            ident, start = await request()
            assert start == 10
            await answer(ident, batch(10, [11]), end)
            await until(lambda: counts["replayed"] == 2, "a replay after the back-off")
            assert counts["gap"] == 2 and {11, 12} <= sink.blocks["e0"]
    finally:
        router.close(linger=0)
        pub.close(linger=0)
        ctx.term()
