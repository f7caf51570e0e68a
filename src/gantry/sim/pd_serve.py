"""The simulator server's P/D part: hold KV after a prefill, pull it before a decode.

``PDServe`` is owned by ``SimServer`` when the engine has a ``--kv-transfer-config`` or
``--pd-role``; the server calls ``before()`` ahead of scheduling a request,
``produced()`` when a prefill request finished, and ``release()`` when a request ended.
The protocol and the pure parts are in ``gantry.sim.pd``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from gantry.protocol import Receive, Scope, Send, block_hashes, respond, salt_keys
from gantry.sim.pd import (
    Held,
    HeldKV,
    KVTransferConfig,
    producer_params,
    pull,
    remote_prefill,
    transfer_seconds,
    wants_remote_decode,
)
from gantry.sim.validate import VLLMError, Work

if TYPE_CHECKING:
    from gantry.sim.engine import SimEngine
    from gantry.sim.server import Handler, SimServer

log = logging.getLogger("gantry.sim")


class PDServe:
    def __init__(self, server: SimServer, cfg: KVTransferConfig) -> None:
        self.server = server
        self.cfg = cfg
        self.held = HeldKV(cfg.timeout_s)
        self.transfers = 0  # KV transfers received (decode side)
        self.failed = 0  # KV transfers given up after the time-out

    @property
    def engine(self) -> SimEngine:
        assert self.server.engine is not None
        return self.server.engine

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {"/sim/kv/pull": {"POST": self._pull}} if self.cfg.produces else {}

    def _free(self, entries: list[Held]) -> None:
        for h in entries:
            self.engine.kv.free(h.blocks)

    def _hashes(self, work: Work) -> list[bytes]:
        bs = self.engine.kv.block_size
        return block_hashes(work.prompts[0], bs, salt_keys(work.cache_salt), [])

    @staticmethod
    def _single(work: Work) -> bool:
        return len(work.prompts) == 1 and work.n == 1

    # -- prefill side ---------------------------------------------------------------------
    def produced(self, work: Work, params: Any, rid: str, scope: Scope) -> dict[str, Any] | None:
        """The prefill finished: keep its full prompt blocks, return the decode's params."""
        if not (self.cfg.produces and wants_remote_decode(params) and self._single(work)):
            return None
        kv = self.engine.kv
        prompt = work.prompts[0]
        hit = kv.lookup(self._hashes(work), len(prompt))
        blocks: list[int] = []
        if hit and kv.allocate(blocks, hit, len(hit) * kv.block_size):
            self._free(self.held.hold(rid, blocks, len(hit) * kv.block_size, time.monotonic()))
        host, port = (scope.get("server") or ("127.0.0.1", 0))[:2]
        tp = self.server.r.settings.tensor_parallel_size
        return producer_params(self.cfg, rid, list(blocks), str(host), int(port or 0), tp)

    async def _pull(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def run(scope: Scope, receive: Receive, send: Send) -> None:
            body = await self.server.json_body(scope, receive)
            now = time.monotonic()
            self._free(self.held.expire(now))
            got = None
            if body.get("engine_id") == self.cfg.engine_id:
                ids = tuple(int(b) for b in body.get("block_ids") or ())
                got = self.held.take(str(body.get("request_id")), ids, now)
            if got is None:
                await respond(send, 404, orjson.dumps({"error": "no such KV blocks"}))
                return
            self.engine.kv.free(got.blocks)  # read by the decode engine: release them
            await respond(send, 200, orjson.dumps({"tokens": got.tokens}))

        await self.server.guard(run, scope, receive, send)

    # -- decode side ----------------------------------------------------------------------
    async def before(self, work: Work, params: Any, rid: str) -> tuple[list[int] | None, int]:
        """Pull and store the prompt's KV; returns the blocks pinned until ``release`` and
        the prompt tokens whose KV came from the prefill engine (vLLM's
        ``num_external_computed_tokens``: blocks already cached here are not counted)."""
        remote = remote_prefill(params)
        if remote is None or not self.cfg.consumes or not self._single(work):
            return None, 0
        tokens = await pull(remote, self.cfg.timeout_s)
        if tokens is None:
            self.failed += 1
            log.warning(
                "KV transfer for %s from %s:%d (engine %s) did not arrive in %gs",
                rid,
                remote.host,
                remote.port,
                remote.engine_id,
                self.cfg.timeout_s,
            )
            if self.cfg.load_failure_policy == "recompute":
                return None, 0
            raise VLLMError(
                500,
                f"KV transfer for request {rid} timed out after {self.cfg.timeout_s:g}s "
                f"(remote engine {remote.engine_id or '?'} at {remote.host}:{remote.port})",
                "InternalServerError",
            )
        self.transfers += 1
        r = self.server.r
        if not r.settings.instant and tokens:
            per_token = r.model.kv_bytes_per_token(r.kv_dtype_bytes)
            dt = transfer_seconds(tokens, per_token, r.settings.tensor_parallel_size, self.cfg.link)
            await asyncio.sleep(dt / r.settings.speedup)
        return self._store(work, tokens)

    def _store(self, work: Work, tokens: int) -> tuple[list[int] | None, int]:
        """The transferred blocks become this engine's computed prefix blocks."""
        kv = self.engine.kv
        prompt = work.prompts[0]
        n = min(tokens // kv.block_size, (len(prompt) - 1) // kv.block_size)
        if n <= 0:
            return None, 0
        hashes = self._hashes(work)[:n]
        hit = kv.lookup(hashes, len(prompt))
        owned: list[int] = []
        if not kv.allocate(owned, hit, n * kv.block_size):
            return None, 0  # no room: the request computes the prompt itself
        kv.cache_full_blocks(owned, hashes, len(hit), prompt, salt=work.cache_salt)
        return owned, (n - len(hit)) * kv.block_size

    def release(self, blocks: list[int] | None) -> None:
        if blocks:
            self.engine.kv.free(blocks)

    def __repr__(self) -> str:
        return (
            f"<PDServe {self.cfg.role} link={self.cfg.link_name} held={len(self.held)} "
            f"received={self.transfers} failed={self.failed}>"
        )
