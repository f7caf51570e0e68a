"""Batch jobs in SQL: one row per batch, one row per input line.

Replicas share the work through leases. A line moves ``pending -> claimed -> done``;
claiming is a compare-and-set on ``(state, lease_until)`` (PostgreSQL also takes the
candidate rows with ``FOR UPDATE SKIP LOCKED``, so replicas do not even contend for
them), and a line's result is written in the same statement that marks it done, only
by the replica that holds its lease. A claim whose lease ran out (its replica died) may
be claimed again. ``lease_until`` of a pending line is also its "not before" (a line
refused for capacity waits). Batch-level steps (validating the input, finalizing the
output) take a lease on the batch row the same way.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gantry.state.sql import batch_lines, batches

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass(slots=True)
class BatchRecord:
    id: str
    tenant: str
    identity: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: float
    expires_at: float
    times: str = "{}"
    metadata: str | None = None
    errors: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    owner: str | None = None
    lease_until: float = 0.0

    def openai(self) -> dict[str, Any]:
        """The OpenAI ``batch`` object."""
        t = json.loads(self.times)
        errors = json.loads(self.errors) if self.errors else None
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": errors} if errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created_at),
            "in_progress_at": _int(t.get("in_progress")),
            "expires_at": int(self.expires_at),
            "finalizing_at": _int(t.get("finalizing")),
            "completed_at": _int(t.get("completed")),
            "failed_at": _int(t.get("failed")),
            "expired_at": _int(t.get("expired")),
            "cancelling_at": _int(t.get("cancelling")),
            "cancelled_at": _int(t.get("cancelled")),
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": json.loads(self.metadata) if self.metadata else None,
        }


def _int(v: float | None) -> int | None:
    return int(v) if v is not None else None


@dataclass(frozen=True, slots=True)
class LineRow:
    """A line as validation leaves it: to run (``result`` None) or already failed."""

    line: int
    custom_id: str
    offset: int
    length: int
    result: str | None = None


@dataclass(frozen=True, slots=True)
class LineWork:
    """A claimed line: what the runner needs to run it."""

    batch_id: str
    line: int
    custom_id: str
    offset: int
    length: int
    attempts: int
    input_file_id: str = field(compare=False)
    endpoint: str = field(compare=False)
    identity: str = field(compare=False)


@dataclass(frozen=True, slots=True)
class Counts:
    total: int
    completed: int  # done, in the output file
    failed: int  # done, in the error file
    open: int  # pending or claimed
    running: int  # claimed with a live lease


class BatchStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._pg = engine.dialect.name == "postgresql"

    # -- batches ------------------------------------------------------------------------
    async def create(self, rec: BatchRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(batches).values(**_fields(rec)))

    async def get(self, batch_id: str, tenant: str | None = None) -> BatchRecord | None:
        q = select(batches).where(batches.c.id == batch_id)
        if tenant is not None:
            q = q.where(batches.c.tenant == tenant)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return BatchRecord(**row._mapping) if row is not None else None

    async def page(self, tenant: str | None, *, limit: int, after: str | None) -> list[BatchRecord]:
        """Newest first, as OpenAI lists them (``after``: the last id of the page before)."""
        q = select(batches)
        if tenant is not None:
            q = q.where(batches.c.tenant == tenant)
        if after:
            q = q.where(batches.c.id < after)
        async with self.engine.connect() as conn:
            rows = await conn.execute(q.order_by(batches.c.id.desc()).limit(limit))
            return [BatchRecord(**r._mapping) for r in rows]

    async def active(self, limit: int = 100) -> list[BatchRecord]:
        """Batches that are not finished (oldest first), for the runner to look after."""
        q = select(batches).where(batches.c.status.in_(ACTIVE)).order_by(batches.c.id).limit(limit)
        async with self.engine.connect() as conn:
            return [BatchRecord(**r._mapping) for r in await conn.execute(q)]

    async def set_status(
        self, batch_id: str, old: Sequence[str], new: str, now: float, **values: Any
    ) -> bool:
        """Compare-and-set of the status (and the time it was reached)."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(select(batches.c.times).where(batches.c.id == batch_id))
            ).first()
            if row is None:
                return False
            times = json.loads(row[0])
            times.setdefault(new, now)
            r = await conn.execute(
                update(batches)
                .where(batches.c.id == batch_id, batches.c.status.in_(old))
                .values(status=new, times=json.dumps(times), **values)
            )
            return bool(r.rowcount)

    async def take(self, batch_id: str, owner: str, now: float, lease_s: float) -> bool:
        """A lease on the batch row for a batch-level step (validate, finalize)."""
        async with self.engine.begin() as conn:
            r = await conn.execute(
                update(batches)
                .where(
                    batches.c.id == batch_id,
                    or_(batches.c.lease_until < now, batches.c.owner == owner),
                )
                .values(owner=owner, lease_until=now + lease_s)
            )
            return bool(r.rowcount)

    async def start(
        self, batch_id: str, owner: str, lines: Sequence[LineRow], failed: int, now: float
    ) -> bool:
        """Validation done: the lines are stored and the batch is in progress, in one
        transaction (a crash before it leaves the batch validating, to be done again)."""
        async with self.engine.begin() as conn:
            r = await conn.execute(
                update(batches)
                .where(
                    batches.c.id == batch_id,
                    batches.c.owner == owner,
                    batches.c.status == "validating",
                )
                .values(total=len(lines), lease_until=0.0, owner=None)
            )
            if not r.rowcount:
                return False
            await conn.execute(batch_lines.delete().where(batch_lines.c.batch_id == batch_id))
            for i in range(0, len(lines), 1000):
                await conn.execute(
                    insert(batch_lines),
                    [_line_values(batch_id, x) for x in lines[i : i + 1000]],
                )
        return await self.set_status(batch_id, ("validating",), "in_progress", now)

    # -- lines ---------------------------------------------------------------------------
    async def claim(self, owner: str, n: int, now: float, lease_s: float) -> list[LineWork]:
        """Up to ``n`` lines to run: pending ones, or claims whose lease ran out, of batches
        in progress and not past their window."""
        if n <= 0:
            return []
        free = and_(
            batch_lines.c.state.in_(("pending", "claimed")), batch_lines.c.lease_until < now
        )
        q = (
            select(
                batch_lines.c.batch_id,
                batch_lines.c.line,
                batch_lines.c.custom_id,
                batch_lines.c.offset,
                batch_lines.c.length,
                batch_lines.c.attempts,
                batch_lines.c.state,
                batch_lines.c.lease_until,
                batches.c.input_file_id,
                batches.c.endpoint,
                batches.c.identity,
            )
            .join(batches, batches.c.id == batch_lines.c.batch_id)
            .where(free, batches.c.status == "in_progress", batches.c.expires_at > now)
            .order_by(batch_lines.c.batch_id, batch_lines.c.line)
            .limit(n)
        )
        if self._pg:
            q = q.with_for_update(of=batch_lines, skip_locked=True)
        out = []
        async with self.engine.begin() as conn:
            for r in (await conn.execute(q)).all():
                won = await conn.execute(
                    update(batch_lines)
                    .where(
                        batch_lines.c.batch_id == r.batch_id,
                        batch_lines.c.line == r.line,
                        batch_lines.c.state == r.state,
                        batch_lines.c.lease_until == r.lease_until,
                    )
                    .values(
                        state="claimed",
                        owner=owner,
                        lease_until=now + lease_s,
                        attempts=r.attempts + 1,
                    )
                )
                if won.rowcount:
                    out.append(
                        LineWork(
                            r.batch_id,
                            r.line,
                            r.custom_id,
                            r.offset,
                            r.length,
                            r.attempts + 1,
                            r.input_file_id,
                            r.endpoint,
                            r.identity,
                        )
                    )
        return out

    async def renew(
        self, owner: str, keys: Sequence[tuple[str, int]], now: float, lease_s: float
    ) -> None:
        async with self.engine.begin() as conn:
            for batch_id, line in keys:
                await conn.execute(
                    update(batch_lines)
                    .where(*_mine(batch_id, line, owner))
                    .values(lease_until=now + lease_s)
                )

    async def finish(self, work: LineWork, owner: str, ok: bool, result: str) -> bool:
        """Record a line's result; False if this replica no longer holds its lease."""
        async with self.engine.begin() as conn:
            r = await conn.execute(
                update(batch_lines)
                .where(*_mine(work.batch_id, work.line, owner))
                .values(state="done", ok=int(ok), result=result, owner=None, lease_until=0.0)
            )
            return bool(r.rowcount)

    async def release(self, work: LineWork, owner: str, not_before: float) -> None:
        """Give a claimed line back, to be run at ``not_before`` or later."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(batch_lines)
                .where(*_mine(work.batch_id, work.line, owner))
                .values(state="pending", owner=None, lease_until=not_before)
            )

    async def counts(self, batch_id: str, now: float) -> Counts:
        live = and_(batch_lines.c.state == "claimed", batch_lines.c.lease_until >= now)
        q = select(
            func.count(),
            func.sum(_flag(and_(batch_lines.c.state == "done", batch_lines.c.ok == 1))),
            func.sum(_flag(and_(batch_lines.c.state == "done", batch_lines.c.ok == 0))),
            func.sum(_flag(batch_lines.c.state != "done")),
            func.sum(_flag(live)),
        ).where(batch_lines.c.batch_id == batch_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).one()
        total, done_ok, done_err, open_, running = (int(v or 0) for v in row)
        return Counts(total, done_ok, done_err, open_, running)

    async def open_lines(self, batch_id: str, now: float) -> list[tuple[int, str]]:
        """Lines not done and not running: (line, custom_id)."""
        q = (
            select(batch_lines.c.line, batch_lines.c.custom_id)
            .where(
                batch_lines.c.batch_id == batch_id,
                batch_lines.c.state != "done",
                or_(batch_lines.c.state == "pending", batch_lines.c.lease_until < now),
            )
            .order_by(batch_lines.c.line)
        )
        async with self.engine.connect() as conn:
            return [(int(r[0]), str(r[1])) for r in await conn.execute(q)]

    async def fail_open(
        self, batch_id: str, results: Sequence[tuple[int, str]], now: float
    ) -> None:
        """Mark lines that are not running as failed with the given results (expiry)."""
        async with self.engine.begin() as conn:
            for line, result in results:
                await conn.execute(
                    update(batch_lines)
                    .where(
                        batch_lines.c.batch_id == batch_id,
                        batch_lines.c.line == line,
                        batch_lines.c.state != "done",
                        or_(batch_lines.c.state == "pending", batch_lines.c.lease_until < now),
                    )
                    .values(state="done", ok=0, result=result, owner=None, lease_until=0.0)
                )

    async def results(self, batch_id: str, chunk: int = 1000) -> AsyncIterator[tuple[bool, str]]:
        """Done lines in input order: (ok, the output or error line)."""
        last = -1
        while True:
            q = (
                select(batch_lines.c.line, batch_lines.c.ok, batch_lines.c.result)
                .where(
                    batch_lines.c.batch_id == batch_id,
                    batch_lines.c.state == "done",
                    batch_lines.c.line > last,
                )
                .order_by(batch_lines.c.line)
                .limit(chunk)
            )
            async with self.engine.connect() as conn:
                rows = (await conn.execute(q)).all()
            for r in rows:
                yield bool(r.ok), str(r.result)
            if len(rows) < chunk:
                return
            last = rows[-1].line


def _mine(batch_id: str, line: int, owner: str) -> tuple[Any, ...]:
    return (
        batch_lines.c.batch_id == batch_id,
        batch_lines.c.line == line,
        batch_lines.c.state == "claimed",
        batch_lines.c.owner == owner,
    )


def _flag(cond: Any) -> Any:
    return case((cond, 1), else_=0)


def _fields(rec: BatchRecord) -> dict[str, Any]:
    return {f: getattr(rec, f) for f in BatchRecord.__dataclass_fields__}


def _line_values(batch_id: str, x: LineRow) -> dict[str, Any]:
    failed = x.result is not None
    return {
        "batch_id": batch_id,
        "line": x.line,
        "custom_id": x.custom_id,
        "state": "done" if failed else "pending",
        "owner": None,
        "lease_until": 0.0,
        "attempts": 0,
        "offset": x.offset,
        "length": x.length,
        "ok": 0 if failed else None,
        "result": x.result,
    }
