"""Shadow traffic: mirror a share of a model's requests to a candidate, discard its answers.

``shadow: {llama-v1: {target: llama-v2, share: 0.05}}`` copies about 5% of the requests
for ``llama-v1`` (chosen by request id, so a given request is mirrored or not the same
way everywhere) to engines of ``llama-v2``, after the real request is admitted. The
copy runs in the background: the client never waits for it and never sees it. Its
status, duration and time to first token are recorded under
``gantry_shadow_*{model, target}`` so the candidate can be compared with what serves.
At most ``max_inflight`` mirrors run at once per model (the rest are skipped and
counted): a slow candidate cannot pile up work in the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import replace

from gantry.config import Shadow
from gantry.errors import GantryError
from gantry.gateway.dispatch import Dispatcher, Outcome
from gantry.gateway.prepare import Prepared, with_model
from gantry.gateway.relay import relay_rest
from gantry.observability import GatewayMetrics
from gantry.routing import RouteRequest

log = logging.getLogger("gantry.shadow")


def mirrored(rid: str, share: float) -> bool:
    """Is this request in the mirrored share? (A hash of its id: no randomness.)"""
    h = hashlib.blake2b(rid.encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < share


class Shadower:
    def __init__(
        self, rules: Mapping[str, Shadow], dispatcher: Dispatcher, metrics: GatewayMetrics
    ) -> None:
        self.rules = dict(rules)
        self.dispatcher = dispatcher
        self.metrics = metrics
        self._running: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def maybe_mirror(self, p: Prepared, rid: str) -> None:
        rule = self.rules.get(p.model)
        if rule is None or not mirrored(rid, rule.share):
            return
        if self._running.get(p.model, 0) >= rule.max_inflight:
            self.metrics.shadow_skipped.labels(p.model).inc()
            return
        self._running[p.model] = self._running.get(p.model, 0) + 1
        task = asyncio.get_running_loop().create_task(self._mirror(p, rule))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mirror(self, p: Prepared, rule: Shadow) -> None:
        target = rule.target
        copy = replace(
            p,
            model=target,
            requested=target,
            body=with_model(p.body, target),
            route=RouteRequest(target, p.route.session),
            group=None,
        )
        t0 = time.perf_counter()
        status, ttft = 0, None
        try:
            opened = await self.dispatcher.open(
                copy, time.monotonic() + p.timeout_s, _no_keepalive, _no_wait
            )
            status = opened.status
            outcome = Outcome.FAILED
            try:
                if opened.response is not None and opened.stream is not None:
                    ttft = opened.stream.first_token_at
                    if not opened.stream.saw_done:
                        await relay_rest(
                            opened.response.next_chunk,
                            _discard,
                            opened.stream,
                            idle_s=60.0,
                            deadline=time.monotonic() + p.timeout_s,
                        )
                outcome = Outcome.OK
            finally:
                if opened.response is not None:
                    opened.response.close()
                self.dispatcher.release(opened.engine, outcome)
        except GantryError as exc:
            status = exc.status
        except Exception as exc:  # a mirror must never disturb the gateway
            status = 502
            log.debug("shadow request to %s failed: %s", target, type(exc).__name__)
        finally:
            self._running[p.model] -= 1
            m = self.metrics
            m.shadow_requests.labels(p.model, target, str(status)).inc()
            m.shadow_duration.labels(p.model, target).observe(time.perf_counter() - t0)
            if ttft is not None:
                m.shadow_ttft.labels(p.model, target).observe(ttft - t0)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def _no_keepalive() -> None:
    return None


async def _no_wait(full: GantryError, model: str, has_room: object) -> None:
    raise full  # a mirror never queues: it is skipped when the candidate is full


async def _discard(parts: object) -> None:
    return None
