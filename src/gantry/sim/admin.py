"""The simulator's admin endpoints (``--enable-admin``): faults, crash, stats, and the
prefix cache — reset it, or ask how much of a prompt it holds right now.

``POST /sim/cache_match`` takes the body of a chat or completions request and answers
how many of its prompt tokens this engine's prefix cache holds at this moment, computed
from the same block pool and hashes the scheduler uses (what an oracle router needs;
vLLM has no such endpoint). ``POST /reset_prefix_cache`` is vLLM's (served there with
``VLLM_SERVER_DEV_MODE=1``): it clears the cache only when no request holds a block.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING, Any

import orjson

from gantry.protocol import Receive, Scope, Send, block_hashes, respond
from gantry.sim.faults import FaultConfig
from gantry.sim.validate import VLLMError, parse

if TYPE_CHECKING:
    from gantry.sim.server import Handler, SimServer

log = logging.getLogger("gantry.sim")


class SimAdmin:
    """Handlers bound to one ``SimServer``; ``routes()`` is what the server mounts."""

    def __init__(self, server: SimServer) -> None:
        self.server = server

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {
            "/sim/faults": {"GET": self._faults_get, "POST": self._faults_post},
            "/sim/crash": {"POST": self._crash},
            "/sim/stats": {"GET": self._stats},
            "/sim/cache_match": {"POST": self._cache_match},
            "/reset_prefix_cache": {"POST": self._reset_prefix_cache},
        }

    async def _faults_get(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, orjson.dumps(self.server.faults.as_dict()))

    async def _faults_post(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def run(scope: Scope, receive: Receive, send: Send) -> None:
            srv = self.server
            body = await srv.json_body(scope, receive)
            if body.pop("reset", False):
                srv.faults = FaultConfig()
            try:
                srv.faults.update(body)
            except ValueError as exc:
                raise VLLMError(400, str(exc), "BadRequestError") from None
            srv.apply_engine_faults()
            log.warning("fault injection set: %s", srv.faults.as_dict())
            await respond(send, 200, orjson.dumps(srv.faults.as_dict()))

        await self.server.guard(run, scope, receive, send)

    async def _crash(self, scope: Scope, receive: Receive, send: Send) -> None:
        log.error("fault injection: crashing the engine process on command")
        await respond(send, 200, b'{"crashing":true}')
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGKILL)

    async def _stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        srv = self.server
        m, e = srv.metrics, srv.engine
        await respond(
            send,
            200,
            orjson.dumps(
                {
                    "steps": m.steps._value.get(),
                    "step_seconds_model": m.step_model_l._value.get(),
                    "step_seconds_wall": m.step_wall_l._value.get(),
                    "running": e.num_running if e else 0,
                    "waiting": e.num_waiting if e else 0,
                    "kv_usage": e.kv.usage if e else 0.0,
                    "num_gpu_blocks": srv.r.num_gpu_blocks,
                    "in_flight": srv.in_flight,
                }
            ),
        )

    async def _reset_prefix_cache(self, scope: Scope, receive: Receive, send: Send) -> None:
        e = self.server.engine
        # As vLLM: AllBlocksCleared goes out with the engine's next step's events.
        ok = e is not None and e.kv.reset_prefix_cache()
        # vLLM answers 200 {"success": false} when blocks are held (reset refused).
        await respond(send, 200, orjson.dumps({"success": ok}))

    async def _cache_match(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def run(scope: Scope, receive: Receive, send: Send) -> None:
            srv = self.server
            body = await srv.json_body(scope, receive)
            await respond(send, 200, orjson.dumps(cache_match(srv, body)))

        await self.server.guard(run, scope, receive, send)


def cache_match(srv: SimServer, body: dict[str, Any]) -> dict[str, Any]:
    """The first prompt of ``body`` against the engine's prefix cache, plus its load.

    ``body`` is a chat or completions request, or ``{"block_hashes": [hex, ...],
    "num_tokens": N}``: the prompt's full block digests (``gantry.protocol.block_hashes``
    of its token ids) from a caller that tokenized it already, so that asking several
    engines costs each only the lookups. ``cached_tokens`` is what the scheduler would
    take from the cache if the request were admitted now (block-aligned, at most
    prompt - 1 tokens, as vLLM); 0 with prefix caching off."""
    e = srv.engine
    assert e is not None
    bs = e.kv.block_size
    if "block_hashes" in body:
        hashes, num_tokens = _given_hashes(body)
    else:
        work = parse(
            body,
            chat="messages" in body,
            served=srv.r.served,
            tok=srv.tokenizer,
            max_model_len=srv.r.max_model_len,
            request_seed=0,
        )
        ids = work.prompts[0]
        extra = (("cache_salt", work.cache_salt),) if work.cache_salt else None
        hashes, num_tokens = block_hashes(ids, bs, extra, []), len(ids)
    hit = e.kv.lookup(hashes, num_tokens)
    return {
        "prompt_tokens": num_tokens,
        "cached_tokens": len(hit) * bs,
        "cached_blocks": len(hit),
        "prompt_blocks": len(hashes),
        "block_size": bs,
        "running": e.num_running,
        "waiting": e.num_waiting,
        "kv_usage": e.kv.usage,
        "in_flight": srv.in_flight,
    }


def _given_hashes(body: dict[str, Any]) -> tuple[list[bytes], int]:
    raw, n = body.get("block_hashes"), body.get("num_tokens")
    if not isinstance(raw, list) or not all(isinstance(h, str) for h in raw):
        raise VLLMError(400, "block_hashes must be a list of hex strings", "BadRequestError")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise VLLMError(400, "num_tokens must be a non-negative integer", "BadRequestError")
    try:
        return [bytes.fromhex(h) for h in raw], n
    except ValueError:
        raise VLLMError(
            400, "block_hashes must be a list of hex strings", "BadRequestError"
        ) from None
