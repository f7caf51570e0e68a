"""The batch store on a real SQLite file: leases, compare-and-set claims, expiry.
Time is passed in, so lease expiry is tested without waiting."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gantry.state.batches import BatchRecord, BatchStore, LineRow
from gantry.state.files import DirectoryStorage, FileStore
from gantry.state.sql import make_engine, migrate


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def _store(tmp: Path, lines: int = 4) -> BatchStore:
    engine = make_engine(f"sqlite:///{tmp}/s.db")
    await migrate(engine)
    store = BatchStore(engine)
    rec = BatchRecord(
        "batch-1", "t", "{}", "/v1/chat/completions", "f", "24h", "validating", 0.0, 1000.0
    )
    await store.create(rec)
    assert await store.take("batch-1", "v", 1.0, 10)
    rows = [LineRow(i, f"c{i}", i * 10, 10) for i in range(lines)]
    assert await store.start("batch-1", "v", rows, 0, 1.0)
    return store


def test_two_owners_never_claim_the_same_line(tmp_path):
    async def go() -> None:
        store = await _store(tmp_path)
        a = await store.claim("a", 3, 1.0, 10)
        b = await store.claim("b", 3, 1.0, 10)
        assert len(a) == 3 and len(b) == 1
        assert not {(w.batch_id, w.line) for w in a} & {(w.batch_id, w.line) for w in b}
        assert await store.claim("c", 3, 5.0, 10) == []  # leases live until 11
        # "a" dies; at 12 its lines are free, and only the new owner may finish them
        again = await store.claim("c", 3, 12.0, 10)
        assert sorted(w.line for w in again) == sorted(w.line for w in a)
        assert all(w.attempts == 2 for w in again)
        assert not await store.finish(a[0], "a", True, "late")  # lease lost
        assert await store.finish(again[0], "c", True, "r0")
        assert not await store.finish(again[0], "c", True, "twice")  # done is done
        c = await store.counts("batch-1", 12.0)
        assert (c.total, c.completed, c.open, c.running) == (4, 1, 3, 2)
        await store.engine.dispose()

    run(go())


def test_a_released_line_waits_until_not_before(tmp_path):
    async def go() -> None:
        store = await _store(tmp_path, lines=1)
        [w] = await store.claim("a", 1, 1.0, 10)
        await store.release(w, "a", not_before=5.0)
        assert await store.claim("a", 1, 4.0, 10) == []
        assert len(await store.claim("a", 1, 6.0, 10)) == 1
        await store.engine.dispose()

    run(go())


def test_expired_batches_are_not_claimed_and_open_lines_fail(tmp_path):
    async def go() -> None:
        store = await _store(tmp_path, lines=3)
        await store.claim("a", 1, 995.0, 10)  # line 0 runs until 1005
        assert await store.claim("a", 5, 1000.0, 10) == []  # past expires_at
        open_lines = await store.open_lines("batch-1", 1000.0)
        assert [n for n, _ in open_lines] == [1, 2]  # line 0 is claimed, its lease live
        await store.fail_open("batch-1", [(n, f"expired {c}") for n, c in open_lines], 1000.0)
        results = [r async for r in store.results("batch-1")]
        assert results == [(False, "expired c1"), (False, "expired c2")]
        await store.engine.dispose()

    run(go())


def test_files_are_scoped_to_their_tenant(tmp_path):
    async def go() -> None:
        engine = make_engine(f"sqlite:///{tmp_path}/f.db")
        await migrate(engine)
        files = FileStore(engine, DirectoryStorage(tmp_path / "c"))
        f = await files.create("file-1", "acme", "in.jsonl", "batch", b"abc\ndef")
        assert await files.get("other", "file-1") is None
        got = await files.get("acme", "file-1")
        assert got is not None and await files.read(got, 3, 2) == b"\nd"
        assert [x.id for x in await files.page("acme", purpose=None, limit=5, after=None)] == [
            "file-1"
        ]
        await files.delete(f)
        assert await files.get(None, "file-1") is None
        await engine.dispose()

    run(go())
