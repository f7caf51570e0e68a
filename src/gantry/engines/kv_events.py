"""Subscribe to every engine's KV-cache events and keep a block index up to date.

vLLM (``--kv-events-config '{"enable_kv_cache_events": true, "endpoint": "tcp://*:5557"}'``)
and ``gantry sim --kv-events tcp://*:5557`` publish on a ZMQ PUB socket, one message per
engine step that stored or evicted blocks::

    [topic, seq (8-byte big-endian, +1 per batch from 0), msgpack([ts, [event, ...], dp_rank])]

with ``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared`` events as tagged maps (vLLM
>= 0.26) or tagged arrays (older). Decoding, both shapes and the hash form are in
``gantry.engines.kv_wire``: hashes reach the sink as vLLM's unsigned 64-bit ints, also
when the engine publishes digest bytes (their low 64 bits, the same number).

``KVEventSubscriber`` follows one engine: a SUB socket *connected* to the engine's
endpoint (``tcp://10.0.0.5:5557``), subscribed to a topic prefix, read by one task it
owns. What reaches the ``KVEventSink`` (the index):

    BlockStored                  sink.add(engine, hashes)      counted "stored"
    BlockRemoved                 sink.remove(engine, hashes)   counted "removed"
    AllBlocksCleared             sink.clear(engine)            counted "cleared"
    TierBlocksCleared (GPU)      sink.clear(engine)            counted "cleared"

(a clear is the engine's own news, so it does not make the engine degraded).

Only the GPU prefix cache is indexed: events for offloaded tiers (``medium`` CPU or
STORAGE) and for KV groups other than 0 (hybrid models) are skipped, uncounted.

Failures (the rules are ``gantry.engines.kv_stream``) make the engine *degraded* — the
routing policy should score it by approximate prefix matching instead — and are counted
through ``on_event(engine, kind)`` and logged once per degraded episode:

    gap        a batch was lost (seq jumped): blocks cleared, degraded ``recovery_s`` —
               unless the engine has a replay socket (``replay``; ``gantry.engines.
               kv_replay``) that still holds the lost batches: they are applied in
               order first, counted "replayed" (else "replay_failed", then the gap;
               an answer cut short is asked again from where it stopped, up to
               ``REPLAY_ROUNDS`` times; after silence, gaps are not asked about for
               ``REPLAY_BACKOFF_S``)
    restart    seq went back (a new publisher): blocks cleared, degraded ``recovery_s``
    malformed  skipped; a batch with a readable seq is a lost batch (blocks cleared);
               degraded ``recovery_s``
    down       the connection dropped (ZMQ reconnects by itself and says nothing, so the
               socket monitor watches): blocks cleared — the engine may come back empty —
               degraded until connected and a batch arrives
    up         connected: the ZMTP handshake succeeded (the first time too)

A stream joined late (first batch not seq 0) is degraded ``recovery_s``: blocks cached
before it are unknown. Nothing grows with the number of events: the state is a few
numbers per engine, and ZMQ holds at most ``RCVHWM`` messages of ``MAXMSGSIZE`` bytes
(past the high-water mark it drops, which shows up as a gap; a larger message makes ZMQ
drop the connection, a down). ZMTP heartbeats turn a silent network partition into a
disconnect within ``HEARTBEAT_TIMEOUT_MS``.

``KVEventHub`` owns one subscriber per engine (``{name: endpoint}``), one ZMQ context,
and one lifecycle; engines can be added and removed while it runs::

    async with KVEventHub(index, {"a": "tcp://10.0.0.5:5557"}, topic="kv@") as hub:
        await hub.add_engine("b", "tcp://10.0.0.6:5557")
        ...
        if hub.degraded("a"):  # also True for an engine without a subscriber
            ...  # score "a" by approximate prefix matching
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from gantry.engines.kv_replay import (
    MAX_REPLAY,
    REPLAY_IDLE_S,
    REPLAY_TOTAL_S,
    Replay,
    replay,
    wire_seq,
)
from gantry.engines.kv_stream import KVStream, Step
from gantry.engines.kv_wire import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBatch,
    MalformedKVMessage,
    TierBlocksCleared,
    decode_message,
    on_gpu_prefix,
)
from gantry.errors import ConfigError

log = logging.getLogger("gantry.kv_events")

RCVHWM = 10_000  # messages queued in ZMQ before it drops (seen as a gap)
MAXMSGSIZE = 64 << 20  # a 128k-token prompt's BlockStored is under 1 MiB
HEARTBEAT_IVL_MS = 5_000
HEARTBEAT_TIMEOUT_MS = 15_000
RECONNECT_IVL_MAX_MS = 5_000  # back off to this while an engine is gone
DRAIN = 256  # messages handled per wake-up before the loop yields
REPLAY_ROUNDS = 4  # asks per gap while each answer gets further than the last
REPLAY_BACKOFF_S = 30.0  # after an unanswered replay, gaps are not asked about for this long

_UP = zmq.EVENT_HANDSHAKE_SUCCEEDED  # libzmq >= 4.3
KINDS = (
    *("stored", "removed", "cleared", "gap", "restart", "malformed", "down", "up"),
    *("replayed", "replay_failed"),
)
EventCallback = Callable[[str, str], None]
Clock = Callable[[], float]


class KVEventSink(Protocol):
    """The block index: which engine holds which block hashes."""

    def add(self, engine: str, hashes: Iterable[int]) -> None: ...

    def remove(self, engine: str, hashes: Iterable[int]) -> None: ...

    def clear(self, engine: str) -> None: ...


class SubscriberState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class KVEventSubscriber:
    """One engine's KV events into ``sink``; an async context manager owning one task."""

    def __init__(
        self,
        engine: str,
        endpoint: str,
        sink: KVEventSink,
        *,
        topic: str = "",
        replay: str | None = None,
        recovery_s: float = 30.0,
        on_event: EventCallback | None = None,
        clock: Clock = time.monotonic,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.engine = engine
        self.endpoint = endpoint
        self.topic = topic
        self.replay = replay
        self._sink = sink
        self._on_event = on_event
        self._clock = clock
        self._ctx = context
        self._own_ctx = context is None
        self._stream = KVStream(recovery_s)
        self._sub: zmq.asyncio.Socket | None = None
        self._mon: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._failed = False
        self._replay_after = -math.inf  # clock time before which gaps are not replayed
        self.state = SubscriberState.NEW

    # -- lifecycle ------------------------------------------------------------------
    async def __aenter__(self) -> KVEventSubscriber:
        if self.state is not SubscriberState.NEW:
            raise RuntimeError(f"{self!r} cannot be started again")
        self._open_sockets()
        self._task = asyncio.create_task(self._run(), name=f"kv-events-{self.engine}")
        self.state = SubscriberState.RUNNING
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self.state = SubscriberState.CLOSED
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._close_sockets()

    # -- state --------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._stream.connected

    @property
    def degraded(self) -> bool:
        """True when the index should not be trusted for this engine."""
        return (
            self._failed
            or self.state is not SubscriberState.RUNNING
            or self._stream.degraded(self._clock())
        )

    @property
    def degraded_until(self) -> float:
        """Clock time (``clock``, monotonic by default) the engine is degraded until:
        ``inf`` while that depends on the publisher, a past time when trusted."""
        if self._failed or self.state is not SubscriberState.RUNNING:
            return math.inf
        return self._stream.degraded_until(self._clock())

    @property
    def last_seq(self) -> int | None:
        return self._stream.last_seq

    # -- sockets ------------------------------------------------------------------
    def _open_sockets(self) -> None:
        if self._ctx is None:
            self._ctx = zmq.asyncio.Context()
        sub = self._ctx.socket(zmq.SUB)
        for opt, value in (
            (zmq.LINGER, 0),
            (zmq.RCVHWM, RCVHWM),
            (zmq.MAXMSGSIZE, MAXMSGSIZE),
            (zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS),
            (zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS),
            (zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS),
        ):
            sub.setsockopt(opt, value)
        sub.setsockopt(zmq.SUBSCRIBE, self.topic.encode())
        self._sub = sub
        # "Up" is the ZMTP handshake, not the TCP connect: a port that answers TCP but
        # is not a ZMQ publisher (an engine's HTTP port, say) never counts as up.
        self._mon = sub.get_monitor_socket(_UP | zmq.EVENT_DISCONNECTED)
        try:
            sub.connect(self.endpoint)
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise ConfigError(f"KV events endpoint {self.endpoint!r}: {exc}") from None

    def _close_sockets(self) -> None:
        if self._sub is not None:
            if self._mon is not None:
                self._sub.disable_monitor()
                self._mon.close(linger=0)
                self._mon = None
            self._sub.close(linger=0)
            self._sub = None
        if self._own_ctx and self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def _run(self) -> None:
        sub, mon = self._sub, self._mon
        assert sub is not None and mon is not None
        poller = zmq.asyncio.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(mon, zmq.POLLIN)
        try:
            while True:
                ready = dict(await poller.poll())
                # Connection changes first: a disconnect precedes what a new peer sends.
                if mon in ready:
                    while (frames := await _recv(mon)) is not None:
                        self._on_monitor(frames)
                if sub in ready:
                    for _ in range(DRAIN):
                        if (frames := await _recv(sub)) is None:
                            break
                        if self.replay is not None:
                            await self._catch_up(frames)
                        self.handle(frames)
        except Exception:
            # A bug (in the sink, say) must not leave a stale index looking trusted.
            self._failed = True
            log.exception("KV events of engine %s: subscriber stopped", self.engine)
            self._sink.clear(self.engine)

    async def _catch_up(self, frames: list[bytes]) -> None:
        """Before a batch that follows lost ones, ask the replay socket for the lost ones
        and apply them in order, so the stream has no gap; when that fails, the gap is
        handled as without a replay socket (blocks dropped, degraded)."""
        last = self._stream.last_seq
        seq = wire_seq(frames)
        if last is None or seq is None or not last + 1 < seq <= last + 1 + MAX_REPLAY:
            return
        if self._clock() < self._replay_after:
            return  # the replay socket did not answer lately: the gap as without one
        assert self._ctx is not None and self.replay is not None
        outcome = Replay.PARTIAL
        deadline = time.monotonic() + REPLAY_TOTAL_S  # for all rounds: the loop waits
        for _ in range(REPLAY_ROUNDS):
            start, left = self._stream.last_seq, deadline - time.monotonic()
            assert start is not None
            if left <= 0:
                outcome = Replay.NO_ANSWER
                break
            outcome = await replay(
                self._ctx,
                self.replay,
                start + 1,
                seq,
                self.handle,
                idle_s=REPLAY_IDLE_S,
                total_s=left,
                max_msg_size=MAXMSGSIZE,
            )
            if outcome is not Replay.PARTIAL:
                break
        if outcome is Replay.DONE:
            self._count("replayed")
            return
        self._count("replay_failed")
        why = f"replay of batches {last + 1}..{seq - 1} from {self.replay}: {outcome.value}"
        if outcome is Replay.NO_ANSWER:  # warned at most once per back-off
            self._replay_after = self._clock() + REPLAY_BACKOFF_S
            log.warning(
                "KV events of engine %s: %s; gaps not replayed for %g s",
                self.engine,
                why,
                REPLAY_BACKOFF_S,
            )
        else:
            log.info("KV events of engine %s: %s", self.engine, why)

    def _on_monitor(self, frames: list[bytes]) -> None:
        event = parse_monitor_message(frames)["event"]
        now = self._clock()
        if event == _UP:
            self._do(self._stream.connect(now))
        elif event == zmq.EVENT_DISCONNECTED:
            self._do(self._stream.disconnect(now))

    # -- messages (no I/O: tests drive this directly) -------------------------------
    def handle(self, frames: list[bytes]) -> None:
        """One multipart message from the publisher."""
        now = self._clock()
        try:
            batch = decode_message(frames)
        except MalformedKVMessage as exc:
            self._do(self._stream.malformed(exc.seq, exc.reason, now))
            return
        self._do(self._stream.batch(batch.seq, now))
        self._apply(batch)

    def _apply(self, batch: KVEventBatch) -> None:
        for ev in batch.events:
            if isinstance(ev, BlockStored):
                if on_gpu_prefix(ev):
                    self._sink.add(self.engine, ev.block_hashes)
                    self._count("stored")
            elif isinstance(ev, BlockRemoved):
                if on_gpu_prefix(ev):
                    self._sink.remove(self.engine, ev.block_hashes)
                    self._count("removed")
            elif isinstance(ev, AllBlocksCleared) or (
                isinstance(ev, TierBlocksCleared) and ev.medium == "GPU"
            ):
                self._sink.clear(self.engine)
                self._count("cleared")

    def _do(self, step: Step) -> None:
        if step.clear:
            self._sink.clear(self.engine)
        for kind in step.kinds:
            self._count(kind)
        if step.warn:
            log.warning(
                "KV events of engine %s (%s): %s%s; approximate routing until trusted again",
                self.engine,
                self.endpoint,
                step.warn,
                "; its blocks dropped from the index" if step.clear else "",
            )
        if step.info:
            log.info("KV events of engine %s (%s): %s", self.engine, self.endpoint, step.info)

    def _count(self, kind: str) -> None:
        if self._on_event is not None:
            self._on_event(self.engine, kind)

    def __repr__(self) -> str:
        flags = "connected" if self.connected else "disconnected"
        if self.degraded:
            flags += " degraded"
        return (
            f"<KVEventSubscriber {self.engine} {self.endpoint} {self.state.value} {flags} "
            f"seq={self.last_seq}>"
        )


async def _recv(sock: zmq.asyncio.Socket) -> list[bytes] | None:
    try:
        return await sock.recv_multipart(flags=zmq.NOBLOCK)
    except zmq.Again:
        return None


class KVEventHub:
    """Subscribers for a set of engines ``{name: endpoint}``, one context and lifecycle."""

    def __init__(
        self,
        sink: KVEventSink,
        engines: Mapping[str, str] | None = None,
        *,
        topic: str = "",
        recovery_s: float = 30.0,
        on_event: EventCallback | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._sink = sink
        self._topic = topic
        self._recovery_s = recovery_s
        self._on_event = on_event
        self._clock = clock
        self._endpoints: dict[str, tuple[str, str, str | None]] = {
            name: (ep, topic, None) for name, ep in (engines or {}).items()
        }
        self._subs: dict[str, KVEventSubscriber] = {}
        self._ctx: zmq.asyncio.Context | None = None
        self.state = SubscriberState.NEW

    async def __aenter__(self) -> KVEventHub:
        self._ctx = zmq.asyncio.Context()
        self.state = SubscriberState.RUNNING
        try:
            for name, (endpoint, topic, replay) in self._endpoints.items():
                await self._start(name, endpoint, topic, replay)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self.state = SubscriberState.CLOSED
        subs, self._subs = list(self._subs.values()), {}
        for sub in subs:
            await sub.aclose()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def add_engine(
        self, name: str, endpoint: str, *, topic: str | None = None, replay: str | None = None
    ) -> None:
        """Follow engine ``name`` (again, if its endpoint, topic or replay socket changed)."""
        if self.state is SubscriberState.CLOSED:
            raise RuntimeError("the KV event hub is closed")
        want = (endpoint, self._topic if topic is None else topic, replay)
        if self._endpoints.get(name) == want and (
            name in self._subs or self.state is SubscriberState.NEW
        ):
            return
        if name in self._subs:
            await self.remove_engine(name)
        self._endpoints[name] = want
        if self.state is SubscriberState.RUNNING:
            try:
                await self._start(name, *want)
            except BaseException:
                del self._endpoints[name]
                raise

    async def remove_engine(self, name: str) -> None:
        """Stop following ``name`` and drop its blocks from the index."""
        self._endpoints.pop(name, None)
        sub = self._subs.pop(name, None)
        if sub is not None:
            await sub.aclose()
            self._sink.clear(name)

    def degraded(self, name: str) -> bool:
        """True unless ``name`` has a subscriber whose index can be trusted."""
        sub = self._subs.get(name)
        return sub is None or sub.degraded

    def subscriber(self, name: str) -> KVEventSubscriber | None:
        return self._subs.get(name)

    @property
    def engines(self) -> dict[str, str]:
        return {name: ep for name, (ep, _, _) in self._endpoints.items()}

    async def _start(self, name: str, endpoint: str, topic: str, replay: str | None) -> None:
        sub = KVEventSubscriber(
            name,
            endpoint,
            self._sink,
            topic=topic,
            replay=replay,
            recovery_s=self._recovery_s,
            on_event=self._on_event,
            clock=self._clock,
            context=self._ctx,
        )
        await sub.__aenter__()
        self._subs[name] = sub

    def __repr__(self) -> str:
        degraded = sorted(n for n in self._endpoints if self.degraded(n))
        return f"<KVEventHub {self.state.value} engines={len(self._endpoints)} degraded={degraded}>"
