"""The gateway: one request, top to bottom.

    route -> authenticate -> prepare -> admit -> dispatch -> respond -> account

``Gateway.handle()`` takes one HTTP exchange from the front (``gateway.http``). The
route table says who may call the path (404 before authentication for unknown paths);
generation requests are then read and checked once (``prepare``, pure), admitted
(drain gate, limits, capacity: ``admission``), sent to an engine with retries before
the first byte and the fallback chain (``dispatch``), answered whole or streamed
(``respond`` over ``relay``), and accounted (``accounting``: one metric sample, one log
line, a ledger row). Every exception on the way is turned into a response in one place
(``failures``). Stages are plain calls: the hot path pays nothing per stage.

``Gateway`` owns its services (key store, limits, ledger, engine pool, idempotency
store) and opens and closes them as one unit (``async with``); a failed start closes
whatever had been opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson

from gantry.config import GatewayConfig
from gantry.engines.breaker import BreakerState
from gantry.engines.discovery import Discovery, make_sources
from gantry.engines.kv_events import KVEventHub
from gantry.engines.pool import EnginePool, TransportFactory
from gantry.errors import ClientError, MethodNotAllowed, NotFound, UnsupportedMediaType
from gantry.gateway import failures, respond
from gantry.gateway.accounting import Accounting, Record
from gantry.gateway.adapters import Adapters
from gantry.gateway.admin import AdminAPI
from gantry.gateway.admin_routing import RoutingAdmin
from gantry.gateway.admission import Admission
from gantry.gateway.auth import Identity
from gantry.gateway.batch_api import upload_limit
from gantry.gateway.batches import BatchService
from gantry.gateway.dispatch import Dispatcher, Outcome
from gantry.gateway.endpoints import Endpoints
from gantry.gateway.http import Exchange, MemoryConnection
from gantry.gateway.idempotent import check_key, fingerprint, make_store, run_once
from gantry.gateway.prepare import FORWARD, Prepared, PrepareSettings, prepare
from gantry.gateway.reconfigure import Plan, plan
from gantry.gateway.routes import match, route_table
from gantry.gateway.security import Security
from gantry.gateway.shadow import Shadower
from gantry.observability import GatewayMetrics, RequestLog, Tracer
from gantry.protocol import encode_comment
from gantry.routing import PoolSnapshot
from gantry.state.ledger import UsageLedger
from gantry.state.limits import LimitStore

log = logging.getLogger("gantry.gateway")
_KEEPALIVE = encode_comment("keep-alive")
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)
Endpoint = Callable[[Exchange, Identity, Record], Awaitable[None]]


class Gateway:
    def __init__(
        self,
        cfg: GatewayConfig,
        pool: EnginePool | None = None,
        *,
        metrics: GatewayMetrics | None = None,
        transport_factory: TransportFactory | None = None,
        request_log: RequestLog | None = None,
    ) -> None:
        self.cfg = cfg
        if pool is None:
            pool = (
                EnginePool(cfg.engines, cfg.health, transport_factory)
                if transport_factory is not None
                else EnginePool(cfg.engines, cfg.health)
            )
        self.pool = pool
        self.metrics = metrics or GatewayMetrics()
        self._tokenize_turn = 0  # kv_aware's /tokenize calls take the engines in turn
        self.pool.listeners.append(self.metrics.on_snapshot)
        self.discovery: Discovery | None = None  # engines found at run time (k8s, DNS)
        if cfg.discovery.enabled:
            sources = make_sources(cfg.discovery, self._discovery_event)
            self.discovery = Discovery(self.pool, sources, on_event=self._discovery_event)
        self.tracer = Tracer(cfg.tracing)
        self.security = Security(cfg, self.metrics)
        self.auth = self.security.auth
        self.dispatcher = Dispatcher(
            self.pool, self.metrics, cfg, self.tracer, degraded=self._kv_degraded
        )
        self.pool.listeners.append(self._observe_routing)
        self.kv_events = KVEventHub(
            self.dispatcher.policies.kv,
            recovery_s=cfg.routing.kv_aware.recovery_s,
            on_event=self._kv_event,
        )
        self.admission = Admission(cfg.admission, self.security, self.dispatcher, self.metrics)
        if request_log is None and cfg.logging.requests:
            request_log = RequestLog()
        self.accounting = Accounting(
            self.metrics,
            request_log=request_log,
            log_probes=cfg.logging.probe_requests,
            ledger=self.security.ledger,
        )
        admin = AdminAPI(cfg, keys=self.security.keys, auth=self.auth, ledger=self.security.ledger)
        self.endpoints = Endpoints(cfg, self.pool, self.metrics, admin)
        self.loader: Callable[[], GatewayConfig] | None = None  # where a reload reads from
        self.endpoints.routing_admin = RoutingAdmin(self, self.security.keys)
        self.endpoints.status_page = self
        self.adapters = Adapters(self.pool, cfg.adapters, self.security.keys)
        self.endpoints.adapters = self.adapters
        self.started_at = time.monotonic()
        self.shadower = Shadower(cfg.shadow, self.dispatcher, self.metrics)
        self.idem_store = make_store(cfg.idempotency) if cfg.idempotency.enabled else None
        self.routes = route_table(cfg)
        self.settings = PrepareSettings.of(cfg)
        self.wanted = frozenset(
            {
                b"x-request-id",
                b"content-type",
                b"idempotency-key",
                b"authorization",
                b"x-request-timeout",
                self.settings.priority_header,
                self.settings.session_header,
                *FORWARD,
            }
        )
        self._endpoints: dict[str, Endpoint] = {
            "health": self.endpoints.health,
            "readyz": self.endpoints.readyz,
            "metrics": self.endpoints.metrics_page,
            "openapi": self.endpoints.openapi,
            "models": self.endpoints.models,
            "admin": self.endpoints.admin,
            "generate": self.generate,
        }
        self.batches: BatchService | None = None
        self.body_limits: dict[str, int] = {}  # path -> body limit, for the HTTP front
        if cfg.batches_on:
            self.batches = BatchService(
                cfg,
                self.security.sql,
                self.auth,
                self.internal,
                capacity=self._capacity,
                interactive_waiting=self.admission.queue.total_waiting,
            )
            self._endpoints["files"] = self.batches.api.handle_files
            self._endpoints["batches"] = self.batches.api.handle_batches
            self.body_limits["/v1/files"] = upload_limit(cfg)
        self._stack: contextlib.AsyncExitStack | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # engine removals draining

    # -- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> Gateway:
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.security.aclose)  # closes what start() opened
            await self.security.start()
            await stack.enter_async_context(self.pool)
            if self.discovery is not None:
                await stack.enter_async_context(self.discovery)
            await stack.enter_async_context(self.kv_events)
            for name in self.pool.names():
                spec = self.pool.spec_of(name)
                if spec.kv_events:
                    await self.kv_events.add_engine(
                        name, spec.kv_events, topic=spec.kv_topic, replay=spec.kv_replay
                    )
            if self.idem_store is not None:
                stack.push_async_callback(self.idem_store.aclose)
            if self.accounting.log is not None:
                stack.callback(self.accounting.log.flush)
            stack.push_async_callback(self.shadower.aclose)
            if self.batches is not None:  # closed first: its lines finish on the engines
                await self.batches.start()
                stack.push_async_callback(lambda: self._close_batches(self.cfg.shutdown.grace_s))
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.start_drain()
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def _close_batches(self, grace_s: float) -> None:
        assert self.batches is not None
        await self.batches.aclose(grace_s)

    def _capacity(self) -> int:
        """In-flight capacity of the healthy engines (0: unlimited), for batch shares."""
        per = self.cfg.admission.max_inflight_per_engine
        return per * sum(1 for e in self.pool.snapshot.engines if e.healthy) if per else 0

    async def internal(
        self, path: str, body: bytes, ident: Identity, idempotency_key: str
    ) -> tuple[int, str, bytes]:
        """One request run by the gateway itself (a batch line) as ``ident``: the whole
        pipeline after authentication, at the batch priority, accounted like any other.
        Returns the status, the request id and the body."""
        rid = os.urandom(16).hex()
        headers = {
            b"content-type": "application/json",
            b"x-request-id": rid,
            b"idempotency-key": idempotency_key,
            self.settings.priority_header: str(self.cfg.batches.priority),
        }
        conn = MemoryConnection()
        x = conn.exchange("POST", path, headers, body)
        route = match(self.routes, path)
        rec = Record(rid, route.label if route is not None else "other", x.t0)
        rec.key_id, rec.tenant = ident.key_id, ident.tenant
        try:
            await self.generate(x, ident, rec)
        except Exception as exc:
            await failures.answer(x, exc, rec, self.metrics)
        finally:
            self.accounting.finish(rec)
        status, _, answer = conn.response()
        return status, rid, answer

    async def reconfigure(self, new: GatewayConfig) -> Plan:
        """Apply a new configuration (see ``gateway.reconfigure``); ``ConfigError`` if it
        holds a change that needs a restart, and then nothing changes."""
        found = self.discovery.owned if self.discovery is not None else {}
        running = {name: self.pool.spec_of(name) for name in self.pool.names() if name not in found}
        change = plan(self.cfg, new, running)
        self.cfg = new
        self.settings = PrepareSettings.of(new)
        self.routes = route_table(new)
        self.endpoints.cfg = new
        self.security.cfg = new
        self.dispatcher.reconfigure(new)
        self.admission.reconfigure(new.admission)
        self.shadower.rules = dict(new.shadow)
        self.adapters.cfg = new.adapters
        if not new.logging.requests:
            self.accounting.log = None
        elif self.accounting.log is None:
            self.accounting.log = RequestLog()
        self.accounting.log_probes = new.logging.probe_requests
        for name in change.removed:
            self._background(self._remove_engine(name, new.shutdown.grace_s))
        for spec in change.added:
            name = await self.pool.add(spec)
            if spec.kv_events:
                await self.kv_events.add_engine(
                    name, spec.kv_events, topic=spec.kv_topic, replay=spec.kv_replay
                )
        return change

    async def _remove_engine(self, name: str, grace_s: float) -> None:
        await self.kv_events.remove_engine(name)
        await self.pool.remove(name, drain=True, grace_s=grace_s)

    def _observe_routing(self, snap: PoolSnapshot) -> None:
        """Routing gauges, refreshed with every pool snapshot (every health round)."""
        m, policies = self.metrics, self.dispatcher.policies
        for index, name in ((policies.prefix, "prefix"), (policies.kv, "kv")):
            m.index_blocks.labels(name).set(index.blocks())
            m.index_bytes.labels(name).set(index.memory_bytes())
        for e in snap.engines:
            if self.kv_events.subscriber(e.name) is not None:
                m.kv_degraded.labels(e.name).set(1 if self.kv_events.degraded(e.name) else 0)

    def _discovery_event(self, source: str, event: str) -> None:
        self.metrics.discovery_events.labels(source, event).inc()
        if self.discovery is not None:
            for s in self.discovery.statuses():
                self.metrics.discovery_up.labels(s.source).set(1 if s.up else 0)
                self.metrics.discovery_engines.labels(s.source).set(s.engines)

    def _kv_degraded(self, engine: str) -> bool:
        return self.kv_events.degraded(engine)

    def _kv_event(self, engine: str, kind: str) -> None:
        self.metrics.kv_events.labels(engine, kind).inc()

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what GET /admin/status reads (gateway.admin_status) -----------------------------
    def breakers(self) -> dict[str, BreakerState]:
        return self.dispatcher.breakers

    def queued(self, model: str) -> int:
        return self.admission.queue.waiting(model)

    def limit_store(self) -> LimitStore:
        return self.security.limits

    def ledger(self) -> UsageLedger | None:
        return self.security.ledger

    def readiness(self) -> tuple[bool, list[str]]:
        return self.endpoints.readiness()

    def start_drain(self) -> None:
        """Readiness turns 503 and new generation requests are refused (503)."""
        self.admission.draining = True
        self.endpoints.draining = True

    @property
    def draining(self) -> bool:
        return self.admission.draining

    # -- one request ----------------------------------------------------------------------
    async def handle(self, x: Exchange) -> None:
        rid = x.headers.get(b"x-request-id")
        if not rid or len(rid) > 128:
            rid = os.urandom(16).hex()
        x.response_headers.append((b"x-request-id", rid.encode("latin-1")))
        route = match(self.routes, x.path)
        rec = Record(rid, route.label if route is not None else "other", x.t0)
        task = asyncio.current_task()
        if task is not None:
            x.cancel_on_gone(task)  # a client that leaves cancels its engine request
        try:
            if route is None:
                raise NotFound(f"Unknown path {x.path}")
            ident = self.auth.check(route.roles, x.headers.get(b"authorization"), route.label)
            rec.key_id, rec.tenant = ident.key_id, ident.tenant
            if x.method not in route.methods:
                raise MethodNotAllowed(f"Method {x.method} not allowed on {x.path}")
            await self._endpoints[route.handler](x, ident, rec)
        except asyncio.CancelledError:
            if not x.gone or task is None:
                raise
            task.uncancel()
            rec.gone = True
        except Exception as exc:
            await failures.answer(x, exc, rec, self.metrics)
        finally:
            self.accounting.finish(rec)

    async def generate(self, x: Exchange, ident: Identity, rec: Record) -> None:
        ctype = x.headers.get(b"content-type", "")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            raise UnsupportedMediaType(
                f"Content-Type must be application/json, got {ctype or 'nothing'}."
            )
        raw = await x.read_body(self.cfg.limits.max_body_bytes, self.cfg.security.body_timeout_s)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ClientError(f"Request body is not valid JSON: {exc}", param="body") from None
        if self.cfg.adapters.on_demand and isinstance(body, dict):
            model = body.get("model")
            if isinstance(model, str):  # a registered LoRA adapter no engine has loaded yet
                await self.adapters.ensure(self.settings.aliases.get(model, model))
        if self.tracer.enabled:
            await self._traced(x, raw, body, ident, rec)
            return
        p = prepare(
            rec.endpoint, raw, body, ident, x.headers, rec.rid, self.settings, self.pool.snapshot
        )
        if self.dispatcher.policies.wants_chains(p.model):
            await self._fill_chains(p, body)
        await self._admit_and_serve(x, p, ident, rec, raw)

    async def _fill_chains(self, p: Prepared, body: Any) -> None:
        """Prefix chains for cache-aware routing (kv_aware may ask an engine to tokenize)."""
        healthy = self.pool.snapshot.healthy_for(p.model)
        engine = None
        if healthy:  # in turn: one engine's API server would tokenize for the whole pool
            self._tokenize_turn += 1
            engine = self.pool.transport(healthy[self._tokenize_turn % len(healthy)].name)
        await self.dispatcher.policies.fill_chains(p.route, body, engine)

    async def _traced(
        self, x: Exchange, raw: bytes, body: Any, ident: Identity, rec: Record
    ) -> None:
        parent = {
            k.decode(): v for k, v in x.headers.items() if k in (b"traceparent", b"tracestate")
        }
        with self.tracer.span("gantry.request", parent, endpoint=rec.endpoint, request_id=rec.rid):
            with self.tracer.span("admission"):
                p = prepare(
                    rec.endpoint,
                    raw,
                    body,
                    ident,
                    x.headers,
                    rec.rid,
                    self.settings,
                    self.pool.snapshot,
                )
            if self.dispatcher.policies.wants_chains(p.model):
                await self._fill_chains(p, body)
            with self.tracer.span("dispatch", model=p.model):
                self.tracer.inject(p.engine_headers)  # engines continue this trace
                await self._admit_and_serve(x, p, ident, rec, raw)

    async def _admit_and_serve(
        self, x: Exchange, p: Prepared, ident: Identity, rec: Record, raw: bytes
    ) -> None:
        rec.model = p.model
        rec.stream = p.stream
        if p.split is not None:
            rec.split, rec.arm = p.split, p.arm
            x.response_headers.append((b"x-gantry-arm", (p.arm or "").encode()))
        if p.redactions:
            self.metrics.redactions.inc(p.redactions)
        deadline = time.monotonic() + p.timeout_s
        key = x.headers.get(b"idempotency-key") if self.idem_store is not None else None
        if key is None:
            await self._serve(x, p, ident, rec, deadline)
            return
        assert self.idem_store is not None
        await run_once(
            self.idem_store,
            self.cfg.idempotency,
            f"{ident.tenant}:{check_key(key)}",  # keys are per tenant: no cross-tenant replays
            fingerprint(p.endpoint, raw, ident.tenant),
            deadline,
            x,
            rec,
            lambda: self._serve(x, p, ident, rec, deadline),
            lambda outcome: self.metrics.idempotent_replays.labels(outcome).inc(),
        )

    async def _serve(
        self, x: Exchange, p: Prepared, ident: Identity, rec: Record, deadline: float
    ) -> None:
        async def keepalive() -> None:
            if not x.started:
                x.start_stream(200)
            await x.write(_KEEPALIVE)

        active = self.accounting.children(p.model, rec.endpoint).active
        async with self.admission.enter(p, ident, rec, x.response_headers, deadline) as ticket:
            rec.admitted = True
            if self.shadower.rules:
                self.shadower.maybe_mirror(p, rec.rid)
            active.inc()
            try:
                opened = await self.dispatcher.open(p, deadline, keepalive, ticket.wait_for_room)
                rec.engine = opened.engine
                outcome = Outcome.FAILED
                try:
                    if p.stream:
                        t = self.cfg.timeouts
                        outcome = await respond.stream(
                            x,
                            opened,
                            p,
                            rec,
                            idle_s=t.idle_s,
                            deadline=deadline,
                            itl_observe=self.accounting.itl(p.model),
                        )
                    else:
                        outcome = respond.unary(x, opened, p, rec)
                except asyncio.CancelledError:
                    outcome = Outcome.ABANDONED
                    raise
                finally:
                    self.dispatcher.release(opened.engine, outcome)
            finally:
                active.dec()
