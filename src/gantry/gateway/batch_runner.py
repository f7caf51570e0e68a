"""The batch runner: every replica runs one, and they share the lines through leases.

One loop: look after the active batches (validate new ones, expire, finalize), then
claim as many lines as ``batch_policy.room()`` allows and run each through the
gateway's own pipeline (``execute``: admission at the batch priority, the key's limits
and quotas, routing, retries, a ledger row under the key's tenant). Running lines'
leases are renewed every third of ``lease_s``; a replica that dies stops renewing, and
its lines are claimed again once their leases run out.

What "exactly once" means here (docs/batches.md says the same):

* a line's result is written in the statement that marks it done, by the lease holder
  only: each line appears in the output exactly once, and a done line never runs again;
* every line is sent with ``Idempotency-Key: batch:<batch id>:<line>``: with a shared
  idempotency store (``idempotency.store: redis``), a line whose answer was stored but
  whose result was not written (a crash between the two) is answered from the store
  when it runs again, without reaching an engine;
* a graceful stop (SIGTERM) finishes the running lines within ``shutdown.grace_s``;
  what is still running after that is given back and runs again (the engine may then
  have seen it twice). A hard kill leaves the lines that were running at that moment
  to run again after their leases expire: those, at most ``concurrency`` per replica,
  may reach an engine twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gantry.config import BatchesConfig
from gantry.gateway import batch_policy as policy
from gantry.gateway.auth import Identity
from gantry.state.batches import BatchRecord, BatchStore, LineWork
from gantry.state.files import FileStore

log = logging.getLogger("gantry.batches")

# (endpoint, body, identity, idempotency key) -> (status, request id, body)
Execute = Callable[[str, bytes, Identity, str], Awaitable[tuple[int, str, bytes]]]


class State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class BatchRunner:
    def __init__(
        self,
        cfg: BatchesConfig,
        store: BatchStore,
        files: FileStore,
        execute: Execute,
        *,
        resolve: Callable[[str], Identity | None],
        capacity: Callable[[], int],
        interactive_waiting: Callable[[], int],
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.files = files
        self.execute = execute
        self.resolve = resolve
        self.capacity = capacity
        self.interactive_waiting = interactive_waiting
        self.owner = f"{os.uname().nodename[:32]}-{os.getpid()}-{os.urandom(3).hex()}"
        self.state = State.NEW
        self.stopping = False
        self._running: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._inputs: dict[str, bytes] = {}  # input file id -> content, for the batch running
        self.done_lines = 0

    def __repr__(self) -> str:
        return f"<BatchRunner {self.owner} {self.state.value} running={len(self._running)}>"

    async def start(self) -> None:
        self.state = State.RUNNING
        self._task = asyncio.create_task(self._loop(), name="batch-runner")

    def poke(self) -> None:
        """New work (a batch created or cancelled): look now, not at the next poll."""
        self._wake.set()

    async def aclose(self, grace_s: float = 0.0) -> None:
        """Stop claiming; let running lines finish for ``grace_s``, then give the rest
        back (they run again later, here or on another replica)."""
        self.stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=grace_s or None)
            for task in list(self._running.values()):
                task.cancel()
            await asyncio.gather(*self._running.values(), return_exceptions=True)
        self.state = State.STOPPED

    # -- the loop -------------------------------------------------------------------------
    async def _loop(self) -> None:
        renew_every = self.cfg.lease_s / 3
        last_renew = time.monotonic()
        while not self.stopping:
            try:
                await self._look_after_batches()
                await self._claim_and_run()
                if time.monotonic() - last_renew >= renew_every and self._running:
                    last_renew = time.monotonic()
                    await self.store.renew(
                        self.owner, list(self._running), time.time(), self.cfg.lease_s
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch runner: a round failed; trying again")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.cfg.poll_interval_s)

    async def _claim_and_run(self) -> None:
        n = policy.room(
            concurrency=self.cfg.concurrency,
            share=self.cfg.share,
            capacity=self.capacity(),
            running=len(self._running),
            interactive_waiting=max(0, self.interactive_waiting() - len(self._running)),
        )
        for work in await self.store.claim(self.owner, n, time.time(), self.cfg.lease_s):
            key = (work.batch_id, work.line)
            task = asyncio.create_task(self._run_line(work), name=f"batch-line-{key}")
            self._running[key] = task
            task.add_done_callback(self._ended_callback(key))

    def _ended_callback(self, key: tuple[str, int]) -> Callable[[asyncio.Task[None]], None]:
        def ended(_task: asyncio.Task[None]) -> None:
            self._running.pop(key, None)
            if not self.stopping:
                self._wake.set()

        return ended

    async def _run_line(self, work: LineWork) -> None:
        finished = False
        try:
            finished = await self._run(work)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch %s line %d failed to run", work.batch_id, work.line)
        finally:
            if not finished:
                not_before = time.time() + self.cfg.retry_after_s
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.store.release(work, self.owner, not_before))

    async def _run(self, work: LineWork) -> bool:
        """Run one line and record its result; False when it must run again later."""
        ident = self.resolve(work.identity)
        if ident is None:
            _, result = policy.output_line(
                work.custom_id,
                401,
                "-",
                b'{"error":{"message":"The API key that created this batch is no longer '
                b'active.","type":"invalid_request_error","param":null,"code":null}}',
            )
            return await self.store.finish(work, self.owner, False, result)
        text = (await self._input(work.input_file_id))[work.offset : work.offset + work.length]
        key = f"batch:{work.batch_id}:{work.line}"
        status, rid, body = await self.execute(
            work.endpoint, policy.request_body(text.strip()), ident, key
        )
        if policy.retry_later(status):
            return False
        ok, result = policy.output_line(work.custom_id, status, rid, body)
        if await self.store.finish(work, self.owner, ok, result):
            self.done_lines += 1
        else:
            log.warning("batch %s line %d: lease lost before its result", work.batch_id, work.line)
        return True

    async def _input(self, file_id: str) -> bytes:
        data = self._inputs.get(file_id)
        if data is None:
            rec = await self.files.get(None, file_id)
            if rec is None:
                raise LookupError(f"input file {file_id} is gone")
            data = await self.files.read(rec)
            if len(self._inputs) >= 4:  # bounded: the batches running now
                self._inputs.pop(next(iter(self._inputs)))
            self._inputs[file_id] = data
        return data

    # -- batch-level steps ----------------------------------------------------------------
    async def _look_after_batches(self) -> None:
        now = time.time()
        for b in await self.store.active():
            counts = None
            if b.status in ("in_progress", "cancelling"):
                counts = await self.store.counts(b.id, now)
            step = policy.next_step(b.status, counts, now, b.expires_at)
            if step is policy.Step.NOTHING:
                continue
            if not await self.store.take(b.id, self.owner, now, self.cfg.lease_s):
                continue  # another replica is on it
            try:
                await self._do(step, b, now)
            except Exception as exc:
                log.exception("batch %s: %s failed", b.id, step.value)
                if step is policy.Step.VALIDATE:
                    await self.store.set_status(
                        b.id, ("validating",), "failed", now, errors=_errors(str(exc))
                    )

    async def _do(self, step: policy.Step, b: BatchRecord, now: float) -> None:
        if step is policy.Step.VALIDATE:
            await self._validate(b, now)
        elif step is policy.Step.EXPIRE:
            open_lines = await self.store.open_lines(b.id, now)
            results = [
                (line, policy.error_line(cid, "batch_expired", policy.EXPIRED_MESSAGE))
                for line, cid in open_lines
            ]
            await self.store.fail_open(b.id, results, now)
            log.warning("batch %s expired with %d line(s) not run", b.id, len(results))
        elif step is policy.Step.FINALIZE:
            await self._finalize(b, now)

    async def _validate(self, b: BatchRecord, now: float) -> None:
        rec = await self.files.get(b.tenant, b.input_file_id)
        if rec is None:
            raise LookupError(f"input file {b.input_file_id} not found")
        data = await self.files.read(rec)
        try:
            rows = policy.validate(data, b.endpoint, self.cfg.max_lines, self.cfg.max_line_bytes)
        except ValueError as exc:
            await self.store.set_status(
                b.id, ("validating",), "failed", now, errors=_errors(str(exc))
            )
            return
        failed = sum(1 for r in rows if r.result is not None)
        await self.store.start(b.id, self.owner, rows, failed, now)
        log.info("batch %s: %d line(s), %d malformed", b.id, len(rows), failed)

    async def _finalize(self, b: BatchRecord, now: float) -> None:
        """Write the output and error files from the lines' results, then the final
        status. Idempotent: a replica that dies here leaves it to be done again."""
        if b.status == "in_progress":
            await self.store.set_status(b.id, ("in_progress",), "finalizing", now)
        expired = now >= b.expires_at
        out: list[str] = []
        err: list[str] = []
        async for ok, line in self.store.results(b.id):
            (out if ok else err).append(line)
        values: dict[str, Any] = {"completed": len(out), "failed": len(err)}
        for lines, kind, field in (
            (out, "output", "output_file_id"),
            (err, "error", "error_file_id"),
        ):
            if lines:
                fid = f"file-{b.id}-{kind}"
                data = ("\n".join(lines) + "\n").encode()
                await self.files.create(fid, b.tenant, f"{b.id}_{kind}.jsonl", "batch_output", data)
                values[field] = fid
        final = policy.final_status(b.status, expired)
        await self.store.set_status(
            b.id,
            ("finalizing", "cancelling"),
            final,
            time.time(),
            owner=None,
            lease_until=0.0,
            **values,
        )
        log.info("batch %s %s: %d ok, %d failed", b.id, final, len(out), len(err))


def _errors(message: str) -> str:
    import json

    return json.dumps([{"code": "invalid_file", "message": message, "param": None, "line": None}])
