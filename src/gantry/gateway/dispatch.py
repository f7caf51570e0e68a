"""Dispatch: choose an engine, make the attempt, and retry before the first byte.

``Dispatcher.open()`` returns an ``Opened`` engine answer that is safe to show the
client: for a non-streaming request the whole body, for a stream the events up to and
including the first token. Until then nothing but keep-alive comments has reached the
client, so every failure on the way is retried the same way (one policy, in one loop):
a refused connection, a time-out, a retryable status (429, 5xx), an answer cut before
its end, a stream that broke or reported an error before its first token. Retries go to
another engine, with jittered backoff, within the retry budget and the deadline. When a
model has no healthy engine left, the model's fallback chain is tried next.

Candidates are the model's healthy engines whose breaker allows a request, that are not
cooling down after a ``Retry-After``, and that have room (gateway in-flight, the
engine's own queue, KV usage); engines above the KV warning level are used only when no
other engine has room.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from gantry.config import GatewayConfig
from gantry.engines.breaker import (
    Breaker,
    BreakerConfig,
    BreakerState,
    allow,
    record,
    release_probe,
)
from gantry.engines.breaker import available as breaker_available
from gantry.engines.pool import EnginePool
from gantry.engines.transport import EngineRequest, EngineResponse
from gantry.errors import (
    EngineRejected,
    EngineTimeout,
    FailedBeforeFirstToken,
    NoCapacity,
    NoHealthyEngine,
    RetryableEngineError,
)
from gantry.gateway import pd
from gantry.gateway.policies import Policies
from gantry.gateway.prepare import Prepared, with_model
from gantry.gateway.relay import Parts, StreamState, first_token, renamer
from gantry.gateway.retry import RetryBudget, backoff, parse_retry_after, retry_allowed
from gantry.observability.metrics import GatewayMetrics
from gantry.observability.tracing import Tracer
from gantry.routing import (
    EngineView,
    PoolSnapshot,
    RouteRequest,
    least_loaded,
    record_choice,
    record_started,
)
from gantry.routing.capacity import CapacityLimits, has_capacity, kv_pressured

log = logging.getLogger("gantry.dispatch")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
T = TypeVar("T")


class Outcome(enum.Enum):
    """An engine's part in one attempt, as its breaker sees it."""

    OK = "ok"  # answered (a 4xx for a bad request counts: the engine works)
    FAILED = "failed"  # could not answer
    ABANDONED = "abandoned"  # the client left: no verdict on the engine


class Room(enum.Enum):
    """Can one more request for a model go to an engine now?"""

    YES = "yes"
    NO_ENGINE = "no_engine"  # no healthy engine at all (dispatch decides: fallback or 503)
    INFLIGHT = "inflight"  # the gateway's in-flight limit on every engine: worth waiting
    ENGINE_QUEUE = "engine_queue"  # every engine's own queue is full: shed
    KV = "kv_pressure"  # every engine's KV cache is above the shed level: shed


class EngineStatusError(RetryableEngineError):
    """The engine answered a retryable status (429, 5xx); kept to relay if all fail."""

    def __init__(self, status: int, body: bytes, engine: str) -> None:
        super().__init__(f"engine {engine} answered {status}", engine=engine)
        self.status = status
        self._body = body

    def body(self) -> bytes:
        return self._body


@dataclass(slots=True)
class Opened:
    """An engine's answer, safe to show the client."""

    engine: str
    model: str  # the model that served (differs from the request's on a fallback)
    status: int
    headers: Mapping[str, str]
    body: bytes = b""  # the whole answer (non-streaming)
    response: EngineResponse | None = None  # the rest of the stream
    first: Parts = field(default_factory=list)  # stream events up to the first token
    stream: StreamState | None = None


Keepalive = Callable[[], Awaitable[None]]
# (why no engine has room, model, "is there room now?") -> returns when there is
WaitForRoom = Callable[[NoCapacity, str, Callable[[], bool]], Awaitable[None]]


class Dispatcher:
    def __init__(
        self,
        pool: EnginePool,
        metrics: GatewayMetrics,
        cfg: GatewayConfig,
        tracer: Tracer | None = None,
        *,
        degraded: Callable[[str], bool] | None = None,
    ) -> None:
        self.pool = pool
        self.policies = Policies(cfg.routing, degraded or _no_events)
        self.metrics = metrics
        self.tracer = tracer
        self._take(cfg)
        r = cfg.retry
        self.breakers: dict[str, BreakerState] = {}
        self.cooldown: dict[str, float] = {}  # engine -> monotonic time it may be used again
        self.budget = RetryBudget(r.budget_ratio, r.budget_min_per_s)
        self._rng = random.Random()
        self._routed_children: dict[str, Any] = {}
        self.on_release: Callable[[str], None] | None = None  # wakes the capacity queue
        self._known: set[str] = set()
        pool.listeners.append(self._forget_departed)

    def _forget_departed(self, snap: PoolSnapshot) -> None:
        """Engines that left the pool take their breaker, cool-down, counters and index
        entries along (bounded by the pool, not by every engine ever added)."""
        names = {e.name for e in snap.engines}
        for gone in self._known - names:
            self.policies.forget(gone)
        self._known = names
        for table in (self.breakers, self.cooldown, self._routed_children):
            for name in [n for n in table if n not in names]:
                del table[name]

    def _take(self, cfg: GatewayConfig) -> None:
        """The settings derived from ``cfg``: capacity limits and the breaker's rules."""
        self.cfg = cfg
        a, b = cfg.admission, cfg.breaker
        self.limits = CapacityLimits(
            a.max_inflight_per_engine, a.max_engine_waiting, a.kv_warn, a.kv_shed
        )
        self.breaker_cfg = BreakerConfig(
            b.failure_threshold,
            b.failure_rate,
            b.window,
            b.min_calls,
            b.cooldown_s,
            b.half_open_max,
        )

    def reconfigure(self, cfg: GatewayConfig) -> None:
        """Take new settings (breaker states, cool-downs and the budget's tokens stay)."""
        self._take(cfg)
        r = cfg.retry
        self.budget.ratio, self.budget.min_per_s = r.budget_ratio, r.budget_min_per_s
        if hasattr(self, "policies"):
            self.policies.reconfigure(cfg.routing)
            self._routed_children.clear()  # the policy label may have changed

    # -- choosing (no I/O) ------------------------------------------------------------
    def _usable(
        self,
        model: str,
        exclude: set[str],
        now: float,
        group: str | None = None,
        phase: str | None = None,
    ) -> Sequence[EngineView]:
        healthy = self.pool.snapshot.healthy_for(model)
        if not (exclude or self.cooldown or self.breakers or group or phase):
            return healthy
        out = []
        for e in healthy:
            if group is not None and e.group != group:
                continue
            if phase is not None and not pd.serves(e.role, phase):
                continue
            if e.name in exclude or self.cooldown.get(e.name, 0.0) > now:
                continue
            b = self.breakers.get(e.name)
            if b is not None and not breaker_available(b, self.breaker_cfg, now):
                continue
            out.append(e)
        return out

    def _candidates(
        self,
        model: str,
        exclude: set[str],
        now: float,
        group: str | None = None,
        phase: str | None = None,
    ) -> tuple[list[EngineView], Room]:
        usable = self._usable(model, exclude, now, group, phase)
        if not usable:
            return [], Room.NO_ENGINE
        inflight, lim = self.pool.inflight, self.limits
        room: list[EngineView] = []
        calm: list[EngineView] = []
        for e in usable:
            if has_capacity(e, inflight, lim):
                room.append(e)
                if not kv_pressured(e, lim):
                    calm.append(e)
        if not room:
            return [], _why_full(usable, inflight, lim)
        return calm or room, Room.YES

    def room(
        self,
        model: str,
        exclude: set[str] | None = None,
        group: str | None = None,
        phase: str | None = None,
    ) -> Room:
        if phase is None and self.disaggregated(model):
            return self._pd_room(model, exclude or set(), group)
        return self._candidates(model, exclude or set(), time.monotonic(), group, phase)[1]

    def _pd_room(self, model: str, exclude: set[str], group: str | None) -> Room:
        for phase in (pd.PREFILL, pd.DECODE):
            why = self.room(model, exclude, group, phase)
            if why is not Room.YES:
                return why
        return Room.YES

    def disaggregated(self, model: str) -> bool:
        """Does ``model`` run P/D (any of its engines has a prefill or decode role)?"""
        return pd.disaggregated(e.role for e in self.pool.snapshot.by_model.get(model, ()))

    def _room_fn(
        self, model: str, exclude: set[str], group: str | None, phase: str | None = None
    ) -> Callable[[], bool]:
        return lambda: self.room(model, exclude, group, phase) in (Room.YES, Room.NO_ENGINE)

    def choose(
        self,
        route: RouteRequest,
        exclude: set[str],
        now: float,
        group: str | None = None,
        phase: str | None = None,
    ) -> str:
        candidates, why = self._candidates(route.model, exclude, now, group, phase)
        if why is Room.NO_ENGINE:
            where = f" in group '{group}'" if group else ""
            where += f" for {phase}" if phase else ""
            raise NoHealthyEngine(
                f"No healthy engine{where} can serve model '{route.model}' right now.",
                retry_after=2,
            )
        if why is not Room.YES:
            usable = self._usable(route.model, exclude, now, group, phase)
            raise no_capacity(route.model, why, len(usable))
        # P/D: prefill by the model's policy (cache-aware), decode by load
        policy = least_loaded if phase == pd.DECODE else self.policies.for_model(route.model)[1]
        name = policy(route, candidates, self.pool.inflight).name
        record_choice(policy, route, name)
        b = self.breakers.get(name)
        if b is not None:
            _, self.breakers[name] = allow(b, self.breaker_cfg, now)
        return name

    # -- outcomes -----------------------------------------------------------------------
    def release(self, name: str, outcome: Outcome) -> None:
        """One attempt on ``name`` is over: free its slot and feed its breaker."""
        self.pool.inflight[name] -= 1
        self._feed_breaker(name, outcome)
        if self.on_release is not None:
            self.on_release(name)

    def _feed_breaker(self, name: str, outcome: Outcome) -> None:
        before = self.breakers.get(name)
        failed = outcome is Outcome.FAILED
        if before is None:
            if not failed:
                return  # a healthy engine's success changes nothing (the common case)
            before = BreakerState()
        elif (
            not failed
            and before.state is Breaker.CLOSED
            and not before.consecutive
            and (True not in before.recent)
        ):
            return
        now = time.monotonic()
        if outcome is Outcome.ABANDONED:
            after = release_probe(before)
        else:
            after = record(before, self.breaker_cfg, failed, now)
        if after != before:
            self.breakers[name] = after
        if after.state is not before.state:
            log.warning(
                "circuit breaker for engine %s: %s -> %s",
                name,
                before.state.name.lower(),
                after.state.name.lower(),
            )
            self.metrics.breaker_state.labels(name).set(int(after.state))
            self.metrics.breaker_transitions.labels(name, after.state.name.lower()).inc()

    def _routed(self, name: str, model: str) -> Any:
        c = self._routed_children.get(name)
        if c is None:  # one per engine: bounded by the pool
            policy = self.policies.for_model(model)[0]
            c = self._routed_children[name] = self.metrics.routed.labels(name, policy)
        return c

    # -- the attempt loop -----------------------------------------------------------------
    async def open(
        self,
        p: Prepared,
        deadline: float,
        keepalive: Keepalive,
        wait_for_room: WaitForRoom,
    ) -> Opened:
        """The first good answer from the model's engines or its fallback chain.

        The caller owns the ``Opened`` answer and must ``release(engine, outcome)``.
        """
        chain = (p.model, *self.cfg.fallbacks.get(p.model, ()))
        for i, model in enumerate(chain):
            try:
                return await self._open_model(p, model, deadline, keepalive, wait_for_room)
            except NoHealthyEngine:
                if i + 1 == len(chain):
                    raise
                log.warning(
                    "model %s has no healthy engine; falling back to %s", model, chain[i + 1]
                )
        raise AssertionError("unreachable")

    async def _open_model(
        self,
        p: Prepared,
        model: str,
        deadline: float,
        keepalive: Keepalive,
        wait_for_room: WaitForRoom,
    ) -> Opened:
        route = p.route if model == p.model else RouteRequest(model, p.route.session)
        body = p.body if model == p.model else with_model(p.body, model)
        group = p.group if model == p.model else None
        self.budget.on_request(time.monotonic())
        if self.disaggregated(model):
            return await self._open_pd(
                p, model, route, body, group, deadline, keepalive, wait_for_room
            )

        async def attempt(name: str) -> Opened:
            return await self._attempt(name, model, p, body, deadline, keepalive)

        return await self._failover(route, model, group, None, attempt, deadline, wait_for_room)

    async def _open_pd(
        self,
        p: Prepared,
        model: str,
        route: RouteRequest,
        body: bytes,
        group: str | None,
        deadline: float,
        keepalive: Keepalive,
        wait_for_room: WaitForRoom,
    ) -> Opened:
        """Prefill on one engine, then decode on another carrying its KV params.

        A decode engine that failed after it was reached may have read (and so released)
        the prefill's KV: the next decode attempt prefills again (mostly a cache hit).
        """
        pre_p = replace(p, stream=False, body=pd.prefill_body(body))

        async def prefill(name: str) -> Opened:
            return await self._attempt(name, model, pre_p, pre_p.body, deadline, keepalive)

        async def prefilled() -> dict[str, Any] | None:
            opened = await self._failover(
                route, model, group, pd.PREFILL, prefill, deadline, wait_for_room
            )
            self.release(opened.engine, Outcome.OK)
            return pd.params_of(opened.body)

        params: list[dict[str, Any] | None] = [await prefilled()]

        async def decode(name: str) -> Opened:
            if not params:
                try:
                    params.append(await prefilled())
                except RetryableEngineError as exc:
                    raise _PrefillFailed(exc) from exc  # not the decode engine's fault
            try:
                return await self._attempt(
                    name, model, p, pd.decode_body(body, params[0]), deadline, keepalive
                )
            except ConnectFailed:
                raise  # never reached: the KV is still waiting for a decode engine
            except BaseException:
                params.clear()
                raise

        try:
            return await self._failover(
                route, model, group, pd.DECODE, decode, deadline, wait_for_room
            )
        except _PrefillFailed as failed:
            raise failed.cause from None

    async def _failover(
        self,
        route: RouteRequest,
        model: str,
        group: str | None,
        phase: str | None,
        attempt: Callable[[str], Awaitable[T]],
        deadline: float,
        wait_for_room: WaitForRoom,
    ) -> T:
        """The one retry loop: choose an engine, attempt, fail over before the first byte."""
        tried: set[str] = set()
        last: RetryableEngineError | None = None
        attempts = 0
        while True:
            now = time.monotonic()
            try:
                name = self._choose_traced(route, tried, now, attempts, group, phase)
            except NoCapacity as full:
                await wait_for_room(full, model, self._room_fn(model, tried, group, phase))
                continue
            if last is not None:
                self.metrics.retries.labels(name, _kind(last)).inc()
            tried.add(name)
            self._routed(name, model).inc()
            self.pool.inflight[name] += 1
            try:
                return await attempt(name)  # a stream returns at its first token
            except RetryableEngineError as exc:
                self.release(name, Outcome.OK if _is_429(exc) else Outcome.FAILED)
                self._count_failure(name, exc)
                last = exc
            except EngineRejected:
                self.release(name, Outcome.OK)  # the engine works; the request is bad
                raise
            except BaseException:
                self.release(name, Outcome.ABANDONED)
                raise
            finally:  # its prefill is over on that engine, one way or the other
                record_started(self.policies.for_model(route.model)[1], route, name)
            attempts += 1
            now = time.monotonic()
            if not self._usable(model, tried, now, group, phase):
                raise last  # every engine of the model failed this request
            if not retry_allowed(attempts, self.cfg.retry.attempts, now, deadline, self.budget):
                raise last
            r = self.cfg.retry
            delay = backoff(attempts - 1, r.backoff_base_s, r.backoff_max_s, self._rng)
            await asyncio.sleep(min(delay, max(0.0, deadline - now)))

    def _choose_traced(
        self,
        route: RouteRequest,
        tried: set[str],
        now: float,
        n: int,
        group: str | None,
        phase: str | None = None,
    ) -> str:
        if self.tracer is not None and self.tracer.enabled:
            policy = self.policies.for_model(route.model)[0]
            with self.tracer.span("routing", policy=policy, attempt=n):
                return self.choose(route, tried, now, group, phase)
        return self.choose(route, tried, now, group, phase)

    def _count_failure(self, name: str, exc: RetryableEngineError) -> None:
        self.metrics.upstream_errors.labels(name, _kind(exc)).inc()

    async def _attempt(
        self,
        name: str,
        model: str,
        p: Prepared,
        body: bytes,
        deadline: float,
        keepalive: Keepalive,
    ) -> Opened:
        t = self.cfg.timeouts
        left = deadline - time.monotonic()
        if left <= 0:
            raise EngineTimeout("The request timed out before an engine could answer.")
        first_byte = min(t.ttft_s if p.stream else t.attempt_s, left)
        request = EngineRequest(
            "POST",
            p.endpoint,
            body,
            p.engine_headers,
            connect_timeout=t.connect_s,
            read_timeout=max(0.001, first_byte),
        )
        try:
            resp = await self.pool.transport(name).send(request)
        except EngineTimeout:
            raise
        except RetryableEngineError as exc:
            # refused or reset before any answer: stop routing there until a probe heals it
            self.pool.report_down(name, exc.message)
            raise ConnectFailed(exc.message, engine=name) from exc
        try:
            if resp.status >= 400:
                data = await _read_quietly(resp)
                if resp.status not in RETRY_STATUSES:
                    raise EngineRejected(resp.status, data, engine=name)
                wait = parse_retry_after(resp.headers.get("retry-after"))
                if wait:
                    self.cooldown[name] = time.monotonic() + wait
                raise EngineStatusError(resp.status, data, name)
            if not p.stream:
                return Opened(
                    name, model, resp.status, resp.headers, await _read_all(resp, name, deadline)
                )
            state = StreamState(pass_usage=p.include_usage)
            if p.requested != model and model == p.model:  # alias or split (not a fallback)
                state.rename = renamer(model, p.requested)
            first = await first_token(
                resp.next_chunk,
                state,
                keepalive=keepalive,
                keepalive_s=t.keepalive_interval_s,
                limit_s=min(t.ttft_s, deadline - time.monotonic()),
                buffered=getattr(resp, "buffered", None),
            )
            return Opened(
                name, model, resp.status, resp.headers, response=resp, first=first, stream=state
            )
        except BaseException:
            resp.close()
            raise


def _no_events(engine: str) -> bool:
    return True  # no KV events at all: kv_aware scores every engine by the prefix index


def no_capacity(model: str, why: Room, engines: int) -> NoCapacity:
    text = {
        Room.INFLIGHT: "every engine has its maximum of requests in flight",
        Room.ENGINE_QUEUE: "every engine's own queue is full",
        Room.KV: "every engine's KV cache is above the shed level",
    }.get(why, "no engine has room")
    return NoCapacity(
        f"Model '{model}' is at capacity: {text} ({engines} engine(s)); retry shortly.",
        reason=why.value,
        retry_after=1 if why is Room.INFLIGHT else 2,
    )


def _why_full(
    usable: Sequence[EngineView], inflight: Mapping[str, int], lim: CapacityLimits
) -> Room:
    """The reason none of ``usable`` has room, the one most worth waiting for first."""
    reasons = set()
    for e in usable:
        if lim.max_inflight and inflight.get(e.name, 0) >= lim.max_inflight:
            reasons.add(Room.INFLIGHT)
        elif e.kv_usage is not None and e.kv_usage >= lim.kv_shed:
            reasons.add(Room.KV)
        else:
            reasons.add(Room.ENGINE_QUEUE)
    for r in (Room.INFLIGHT, Room.ENGINE_QUEUE, Room.KV):
        if r in reasons:
            return r
    return Room.INFLIGHT


def _is_429(exc: Exception) -> bool:
    return isinstance(exc, EngineStatusError) and exc.status == 429


def _kind(exc: Exception | None) -> str:
    if isinstance(exc, EngineStatusError):
        return f"http_{exc.status}"
    if isinstance(exc, FailedBeforeFirstToken):
        return "before_first_token"
    if isinstance(exc, EngineTimeout):
        return "timeout"
    if isinstance(exc, MidAnswer):
        return "mid_answer"
    return "connect"


class MidAnswer(RetryableEngineError):
    """The engine's non-streaming answer broke before its end (nothing was sent)."""


class ConnectFailed(RetryableEngineError):
    """The engine could not be reached, or dropped the connection before answering."""


class _PrefillFailed(BaseException):
    """P/D: every prefill engine failed while a decode attempt was under way; carries
    the prefill's error past the decode loop (which must not blame its engine)."""

    def __init__(self, cause: RetryableEngineError) -> None:
        super().__init__(cause.message)
        self.cause = cause


async def _read_all(resp: EngineResponse, name: str, deadline: float) -> bytes:
    if getattr(resp, "complete", False):  # all here already: no timer needed (~1.5 us)
        return await resp.read()
    loop = asyncio.get_running_loop()
    timer = loop.call_later(max(0.001, deadline - time.monotonic()), resp.close)
    try:
        return await resp.read()
    except Exception as exc:
        if time.monotonic() >= deadline:
            raise EngineTimeout(f"engine {name} did not finish in time", engine=name) from None
        raise MidAnswer(
            f"engine {name} failed mid-answer ({type(exc).__name__})", engine=name
        ) from None
    finally:
        timer.cancel()


async def _read_quietly(resp: EngineResponse) -> bytes:
    try:
        return await resp.read()
    except Exception:
        return b""
