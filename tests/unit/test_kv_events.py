"""KV events: wire decoding (both vLLM shapes), the stream state machine, applying events."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable

import msgpack
import pytest

from gantry.engines.kv_events import KVEventHub, KVEventSubscriber
from gantry.engines.kv_stream import KVStream, Step
from gantry.engines.kv_wire import (
    MASK64,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    MalformedKVMessage,
    TierBlocksCleared,
    block_hash,
    decode_event,
    decode_message,
    decode_payload,
    on_gpu_prefix,
)
from gantry.errors import ConfigError
from gantry.sim import kvcache, kvevents

TOKENS = list(range(100, 132))  # two blocks of 16


def pack(obj: object) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def frames(seq: int, events: list[object], *, topic: bytes = b"") -> list[bytes]:
    return [topic, seq.to_bytes(8, "big"), pack([1.5, events, 0])]


# -- decoding ---------------------------------------------------------------------------
def test_map_form_as_the_simulator_publishes_it():
    digests = kvcache.block_hashes(TOKENS, 16)
    hashes = [kvcache.event_hash(d) for d in digests]
    sim_events: list[kvcache.KVEvent] = [
        kvcache.BlockStored(hashes, None, TOKENS, 16),
        kvcache.BlockRemoved(hashes[:1]),
        kvcache.AllBlocksCleared(),
    ]
    batch = decode_message([b"kv", (7).to_bytes(8, "big"), kvevents.encode_batch(sim_events)])
    assert (batch.topic, batch.seq, batch.dp_rank) == ("kv", 7, 0)
    assert batch.events == (
        BlockStored(tuple(hashes), None, tuple(TOKENS), 16, medium="GPU", group_idx=0),
        BlockRemoved((hashes[0],), medium="GPU", group_idx=0),
        AllBlocksCleared(),
    )


def test_salted_blocks_carry_extra_keys_as_vllm():
    """v1/core/block_pool.py::BlockPool.cache_full_blocks: one ``extra_keys`` entry per
    stored block, the cache_salt on the prompt's first block (kv_cache_utils.py::
    generate_block_hash_extra_keys), enough for a consumer to recompute the hashes."""
    import msgpack as _mp

    kv = kvcache.KVCache(8, 16, prefix_caching=True)
    kv.collect_events = True
    salted = kvcache.block_hashes(TOKENS, 16, ("tenant-a",))
    blocks: list[int] = []
    assert kv.allocate(blocks, [], len(TOKENS))
    kv.cache_full_blocks(blocks, salted, 0, TOKENS, salt="tenant-a")
    (ev,) = kv.take_events()
    wire = _mp.unpackb(kvevents.encode_batch([ev]), raw=False)[1][0]
    assert wire["extra_keys"] == [["tenant-a"], None] and wire["group_idx"] == 0
    first = kvcache.hash_block(kvcache.NONE_HASH, tuple(TOKENS[:16]), tuple(wire["extra_keys"][0]))
    assert kvcache.event_hash(first) == wire["block_hashes"][0]
    plain = kvevents.encode_event(kvcache.BlockStored([1], None, TOKENS[:16], 16))
    assert "extra_keys" not in plain  # omitted when unset, as msgspec's omit_defaults


def test_map_form_with_fields_of_newer_vllm():
    ev = {
        "type": "BlockStored",
        "block_hashes": [5],
        "parent_block_hash": 4,
        "token_ids": TOKENS[:16],
        "block_size": 16,
        "lora_id": None,
        "medium": "GPU",
        "lora_name": "adapter",
        "extra_keys": [None],
        "group_idx": 0,
        "kv_cache_spec_kind": "full_attention",
        "locality": "LOCAL",
    }
    assert decode_event(ev) == BlockStored(
        (5,), 4, tuple(TOKENS[:16]), 16, medium="GPU", lora_name="adapter", group_idx=0
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # vLLM 0.9: [tag, block_hashes, parent, token_ids, block_size, lora_id]
        (
            ["BlockStored", [1, 2], None, TOKENS, 16, None],
            BlockStored((1, 2), None, tuple(TOKENS), 16),
        ),
        # later: + medium, lora_name, extra_keys, group_idx (trailing defaults left out)
        (
            ["BlockStored", [3], 2, TOKENS[:16], 16, None, "CPU", None, [None], 1],
            BlockStored((3,), 2, tuple(TOKENS[:16]), 16, medium="CPU", group_idx=1),
        ),
        (
            ["BlockStored", [3], 2, TOKENS[:16], 16, None, "GPU", None, [None], 0, "x", 9, "y"],
            BlockStored((3,), 2, tuple(TOKENS[:16]), 16, medium="GPU", group_idx=0),
        ),
        (["BlockRemoved", [1, 2]], BlockRemoved((1, 2))),
        (["BlockRemoved", [1], "GPU", 0], BlockRemoved((1,), medium="GPU", group_idx=0)),
        (["AllBlocksCleared"], AllBlocksCleared()),
        ({"type": "AllBlocksCleared"}, AllBlocksCleared()),
        ({"type": "TierBlocksCleared", "medium": "CPU"}, TierBlocksCleared("CPU")),
        ({"type": "BlockRemoved", "block_hashes": [9]}, BlockRemoved((9,))),
    ],
)
def test_array_and_map_events(raw: object, expected: object):
    assert decode_event(raw) == expected


def test_batch_shapes_old_new_mixed_and_map():
    stored = ["BlockStored", [1], None, TOKENS[:16], 16, None]
    removed = {"type": "BlockRemoved", "block_hashes": [1], "medium": "GPU"}
    old = decode_payload(pack([2.0, [stored]]))  # before dp_rank existed
    assert old.dp_rank is None and old.events == (BlockStored((1,), None, tuple(TOKENS[:16]), 16),)
    mixed = decode_payload(pack([2.0, [stored, removed], 3]))
    assert mixed.dp_rank == 3 and [type(e) for e in mixed.events] == [BlockStored, BlockRemoved]
    as_map = decode_payload(pack({"ts": 2, "events": [removed], "data_parallel_rank": 1}))
    assert (
        as_map.ts == 2.0 and as_map.dp_rank == 1 and as_map.events == (BlockRemoved((1,), "GPU"),)
    )
    assert decode_payload(pack([2.0, []])).events == ()


def test_bytes_hashes_are_the_same_64_bit_ints_vllm_publishes():
    digests = kvcache.block_hashes(TOKENS, 16)
    as_ints = decode_event(
        {
            "type": "BlockStored",
            "block_hashes": [kvcache.event_hash(d) for d in digests],
            "parent_block_hash": None,
            "token_ids": TOKENS,
            "block_size": 16,
        }
    )
    as_bytes = decode_event(
        {
            "type": "BlockStored",
            "block_hashes": digests,
            "parent_block_hash": digests[0],
            "token_ids": TOKENS,
            "block_size": 16,
        }
    )
    assert isinstance(as_ints, BlockStored) and isinstance(as_bytes, BlockStored)
    assert as_bytes.block_hashes == as_ints.block_hashes
    assert as_bytes.parent_block_hash == as_ints.block_hashes[0]
    digest = hashlib.sha256(b"x").digest()
    assert block_hash(digest) == int.from_bytes(digest[-8:], "big")
    assert block_hash(-1) == MASK64  # a signed 64-bit writer's view of the same bits
    assert block_hash(2**64 - 5) == 2**64 - 5


def test_only_the_gpu_prefix_cache_is_indexed():
    def stored(medium: str | None, group: int | None) -> BlockStored:
        return BlockStored((1,), None, (), 16, medium=medium, group_idx=group)

    assert on_gpu_prefix(stored(None, None)) and on_gpu_prefix(stored("GPU", 0))
    assert not on_gpu_prefix(stored("CPU", 0)) and not on_gpu_prefix(stored("GPU", 1))
    assert not on_gpu_prefix(BlockRemoved((1,), medium="STORAGE"))


GOOD_EVENT = {"type": "BlockRemoved", "block_hashes": [1]}
SEQ = (4).to_bytes(8, "big")


@pytest.mark.parametrize(
    ("msg", "seq", "reason"),
    [
        ([b"", SEQ], None, "2 frames instead"),
        ([b"", SEQ, pack([1.0, []]), b""], None, "4 frames instead"),
        ([b"", b"\x00\x04", pack([1.0, []])], None, "2-byte sequence"),
        ([b"", SEQ, b"\xc1"], 4, "not msgpack"),
        ([b"", SEQ, pack([1.0, []])[:-1]], 4, "not msgpack"),
        ([b"", SEQ, pack([1.0, []]) + b"\x00"], 4, "not msgpack"),  # trailing bytes
        ([b"", SEQ, pack("hello")], 4, "not a batch"),
        ([b"", SEQ, pack([1.0])], 4, "not a batch"),
        ([b"", SEQ, pack({"ts": 1.0})], 4, "not a batch"),
        ([b"", SEQ, pack(["now", []])], 4, "timestamp"),
        ([b"", SEQ, pack([True, []])], 4, "timestamp"),
        ([b"", SEQ, pack([1.0, {}])], 4, "events is not a list"),
        ([b"", SEQ, pack([1.0, [], "rank"])], 4, "data_parallel_rank"),
        ([b"", SEQ, pack([1.0, [7]])], 4, "an event is int"),
        ([b"", SEQ, pack([1.0, [[]]])], 4, "an event is list"),
        ([b"", SEQ, pack([1.0, [{"block_hashes": [1]}]])], 4, "no string 'type'"),
        ([b"", SEQ, pack([1.0, [{"type": "BlockMoved"}]])], 4, "unknown event type"),
        ([b"", SEQ, pack([1.0, [["BlockMoved", [1]]]])], 4, "unknown event type"),
        ([b"", SEQ, pack([1.0, [GOOD_EVENT, {"type": 3}]])], 4, "no string 'type'"),
        ([b"", SEQ, pack([1.0, [{"type": "BlockRemoved"}]])], 4, "has no block_hashes"),
        ([b"", SEQ, pack([1.0, [{"type": "BlockRemoved", "block_hashes": 1}]])], 4, "not list"),
        ([b"", SEQ, pack([1.0, [{"type": "BlockRemoved", "block_hashes": ["a"]}]])], 4, "str"),
        ([b"", SEQ, pack([1.0, [{"type": "BlockRemoved", "block_hashes": [True]}]])], 4, "bool"),
        ([b"", SEQ, pack([1.0, [{"type": "BlockRemoved", "block_hashes": [b""]}]])], 4, "empty"),
        ([b"", SEQ, pack([1.0, [["BlockStored", [1], None, TOKENS]]])], 4, "no block_size"),
        ([b"", SEQ, pack([1.0, [["BlockStored", [1], None, ["a"], 16]]])], 4, "non-int"),
        ([b"", SEQ, pack([1.0, [["BlockStored", [1], None, [], 0]]])], 4, "block_size"),
        ([b"", SEQ, pack([1.0, [["BlockStored", [1], None, [], True]]])], 4, "block_size"),
        ([b"", SEQ, pack([1.0, [["BlockStored", [1], None, [], 16, None, 5]]])], 4, "medium"),
        ([b"", SEQ, pack([1.0, [["BlockRemoved", [1], None, "0"]]])], 4, "group_idx"),
        ([b"", SEQ, pack([1.0, [{"type": "TierBlocksCleared"}]])], 4, "has no medium"),
    ],
)
def test_malformed_messages(msg: list[bytes], seq: int | None, reason: str):
    with pytest.raises(MalformedKVMessage) as info:
        decode_message(msg)
    assert info.value.seq == seq
    assert reason in info.value.reason


# -- the stream state machine -------------------------------------------------------------
def synced(recovery_s: float = 30.0) -> KVStream:
    s = KVStream(recovery_s)
    s.connect(0.0)
    assert s.batch(0, 0.0).info is not None  # first batch of a fresh publisher: trusted
    return s


def test_a_new_stream_is_degraded_until_connected_and_receiving():
    s = KVStream(30.0)
    assert s.degraded(0.0) and s.degraded_until(0.0) == math.inf
    assert s.connect(1.0) == Step(("up",), info="publisher connected")
    assert s.degraded(1.0) and s.degraded_until(1.0) == math.inf
    step = s.batch(0, 2.0)
    assert step.kinds == () and not step.clear and step.info == "in sync at seq 0: index trusted"
    assert not s.degraded(2.0) and s.degraded_until(2.0) == 0.0


def test_joining_a_running_stream_waits_recovery_s():
    s = KVStream(30.0)
    s.connect(0.0)
    step = s.batch(41, 10.0)
    assert step == Step()  # not a gap: nothing was known before
    assert s.degraded(39.9) and s.degraded_until(20.0) == 40.0
    assert not s.degraded(40.0)
    assert s.batch(42, 40.0).info is not None


@pytest.mark.parametrize(
    ("seqs", "kind"),
    [
        ([1, 2, 4], "gap"),
        ([1, 2, 2], "restart"),  # a repeat is not the next batch either
        ([1, 2, 0], "restart"),
        ([1, 2, 1], "restart"),
    ],
)
def test_gap_and_restart_clear_and_degrade(seqs: list[int], kind: str):
    s = synced(30.0)
    *ok, bad = seqs
    for seq in ok:
        assert s.batch(seq, 5.0) == Step()
    step = s.batch(bad, 5.0)
    assert step.kinds == (kind,) and step.clear and step.warn
    assert s.degraded(34.9) and not s.degraded(35.0)
    assert s.last_seq == bad
    assert s.batch(bad + 1, 20.0) == Step()  # the stream goes on from the new number
    assert s.batch(bad + 2, 35.0).info is not None  # trusted again: said once


def test_each_kind_of_problem_is_logged_once_per_episode():
    s = synced(30.0)
    first = s.batch(5, 1.0)
    again = s.batch(9, 2.0)
    restart = s.batch(0, 3.0)
    assert first.warn and first.kinds == ("gap",)
    assert again.warn is None and again.kinds == ("gap",) and again.clear
    assert restart.warn and restart.kinds == ("restart",)
    assert s.batch(1, 33.0).info is not None  # episode over
    assert s.batch(3, 34.0).warn is not None  # a new episode logs again


def test_malformed_with_a_sequence_number_is_a_lost_batch():
    s = synced(30.0)
    step = s.malformed(1, "payload is not msgpack", 5.0)
    assert step.kinds == ("malformed",) and step.clear and "not msgpack" in (step.warn or "")
    assert s.degraded(34.0) and not s.degraded(35.0)
    assert s.batch(2, 6.0) == Step()  # seq 1 was consumed: no gap
    gap_and_bad = s.malformed(9, "x", 7.0)
    assert gap_and_bad.kinds == ("gap", "malformed") and gap_and_bad.clear


def test_malformed_without_a_sequence_number_loses_nothing_known():
    s = synced(30.0)
    step = s.malformed(None, "2 frames", 5.0)
    assert step.kinds == ("malformed",) and not step.clear and step.warn
    assert s.degraded(34.0) and s.last_seq == 0
    assert s.batch(1, 6.0) == Step()
    assert s.malformed(None, "2 frames", 6.0).warn is None  # same episode


def test_down_clears_and_degrades_until_connected_and_receiving():
    s = synced(30.0)
    s.batch(1, 1.0)
    down = s.disconnect(2.0)
    assert down.kinds == ("down",) and down.clear and down.warn == "publisher disconnected"
    assert s.degraded(100.0) and s.degraded_until(100.0) == math.inf
    assert s.disconnect(3.0) == Step()  # one episode, one count
    assert s.connect(4.0).kinds == ("up",)
    assert s.degraded(100.0)  # connected, nothing received yet
    # The engine restarted: its stream begins at 0, so nothing is missing.
    assert s.batch(0, 5.0).info is not None and not s.degraded(5.0)


def test_down_then_the_same_publisher_goes_on():
    s = synced(30.0)
    s.disconnect(2.0)
    s.connect(3.0)
    step = s.batch(17, 4.0)  # no gap or restart is counted on top of the down
    assert step == Step() and s.degraded(33.9) and not s.degraded(34.0)


# -- applying events (the subscriber without its socket) -------------------------------
class RecordingSink:
    """An index stand-in: the calls it received and the blocks each engine holds."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[int, ...]]] = []
        self.blocks: dict[str, set[int]] = {}

    def add(self, engine: str, hashes: Iterable[int]) -> None:
        hashes = tuple(hashes)
        self.calls.append(("add", engine, hashes))
        self.blocks.setdefault(engine, set()).update(hashes)

    def remove(self, engine: str, hashes: Iterable[int]) -> None:
        hashes = tuple(hashes)
        self.calls.append(("remove", engine, hashes))
        self.blocks.setdefault(engine, set()).difference_update(hashes)

    def clear(self, engine: str) -> None:
        self.calls.append(("clear", engine, ()))
        self.blocks.pop(engine, None)


def subscriber() -> tuple[KVEventSubscriber, RecordingSink, Counter[str]]:
    sink, counts = RecordingSink(), Counter[str]()
    sub = KVEventSubscriber(
        "e0", "tcp://127.0.0.1:1", sink, on_event=lambda e, k: counts.update([f"{e}:{k}"])
    )
    return sub, sink, counts


def test_events_reach_the_sink_and_are_counted():
    sub, sink, counts = subscriber()
    stored = {
        "type": "BlockStored",
        "block_hashes": [1, 2],
        "parent_block_hash": None,
        "token_ids": TOKENS,
        "block_size": 16,
    }
    sub.handle(frames(0, [stored, ["BlockRemoved", [1]]]))
    assert sink.blocks == {"e0": {2}}
    sub.handle(frames(1, [{**stored, "medium": "CPU"}, {**stored, "group_idx": 1}]))
    assert sink.blocks == {"e0": {2}}  # other tiers and groups are not this index's
    sub.handle(frames(2, [{"type": "TierBlocksCleared", "medium": "CPU"}]))
    assert sink.blocks == {"e0": {2}}
    sub.handle(frames(3, [["AllBlocksCleared"], stored]))
    assert sink.blocks == {"e0": {1, 2}}
    sub.handle(frames(4, [{"type": "TierBlocksCleared", "medium": "GPU"}]))
    assert sink.blocks == {}
    assert counts == Counter({"e0:stored": 2, "e0:removed": 1, "e0:cleared": 2})
    assert sub.last_seq == 4


def test_failures_clear_the_sink_and_are_counted():
    sub, sink, counts = subscriber()
    stored = ["BlockStored", [1], None, TOKENS[:16], 16, None]
    sub.handle(frames(0, [stored]))
    sub.handle(frames(2, [stored]))  # gap: cleared, then this batch applies
    assert sink.calls[-2:] == [("clear", "e0", ()), ("add", "e0", (1,))]
    sub.handle([b"", (3).to_bytes(8, "big"), b"\xc1"])
    assert sink.blocks == {}
    sub.handle([b"junk"])
    assert counts == Counter({"e0:stored": 2, "e0:gap": 1, "e0:malformed": 2})
    assert sub.degraded and "degraded" in repr(sub)  # and never started


async def test_a_bad_endpoint_is_a_config_error():
    sub, _, _ = subscriber()
    sub.endpoint = "nowhere"
    with pytest.raises(ConfigError, match="KV events endpoint 'nowhere'"):
        await sub.__aenter__()
    await sub.aclose()


def test_hub_without_a_subscriber_is_degraded():
    hub = KVEventHub(RecordingSink(), {"a": "tcp://127.0.0.1:1"})
    assert hub.degraded("a") and hub.degraded("unknown")
    assert hub.engines == {"a": "tcp://127.0.0.1:1"}
    assert repr(hub) == "<KVEventHub new engines=1 degraded=['a']>"
