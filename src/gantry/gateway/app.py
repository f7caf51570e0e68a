"""The gateway ASGI app: one visible place where the request path is assembled.

Order for each request: request id -> error handling (outermost) -> route ->
parse/validate once -> choose an engine and dispatch -> relay -> account.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gantry import __version__
from gantry.config import GatewayConfig
from gantry.engines.pool import EnginePool
from gantry.errors import (
    ClientError,
    EngineRejected,
    EngineTimeout,
    GantryError,
    HeadersTooLarge,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RequestTimeout,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from gantry.gateway.admin import MAX_BODY as ADMIN_MAX_BODY
from gantry.gateway.admin import AdminAPI
from gantry.gateway.auth import ANONYMOUS, Authenticator, Identity
from gantry.gateway.dispatch import Attempt, Dispatcher
from gantry.gateway.idempotent import check_key, fingerprint, make_store, run_once
from gantry.gateway.openapi import openapi_document
from gantry.gateway.redact import redact_body
from gantry.gateway.relay import FailedBeforeFirstToken, StreamStats, error_event, relay
from gantry.gateway.security import Admitted, Security
from gantry.observability import GatewayMetrics, Tracer, request_logger
from gantry.protocol import (
    ENDPOINT_CHAT,
    ENDPOINT_COMPLETIONS,
    ENDPOINT_EMBEDDINGS,
    BodyTooLarge,
    ClientGone,
    Receive,
    RequestShapeError,
    Scope,
    Send,
    encode_done,
    inspect_request,
    read_body,
    respond,
    start_stream,
    stream_chunk,
)
from gantry.routing import RouteRequest, make_policy
from gantry.state.ledger import UsageRecord

log = logging.getLogger("gantry.gateway")
Handler = Callable[[Scope, Receive, Send, "Ctx"], Awaitable[None]]
# Request headers passed on to engines (besides content-type and the request id).
_NO_LIMITS = Admitted([], 0)
_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)
_USAGE_RE = re.compile(rb'"(prompt_tokens|completion_tokens|cached_tokens)":\s*(\d+)')
_FORWARD = frozenset(
    (b"traceparent", b"tracestate", b"x-session-id", b"x-data-parallel-rank", b"x-vllm-priority")
)


@dataclass(slots=True)
class _Prepared:  # not frozen: frozen dataclasses cost ~1 us more to build per request
    endpoint: str
    requested: str
    model: str
    stream: bool
    include_usage: bool
    raw: bytes
    headers: dict[str, str]
    route: RouteRequest
    deadline: float  # time.monotonic() by which the whole request must be done
    priority: int
    max_tokens: int | None = None


class Ctx:
    """Per-request context: id, response headers, and whether the response started."""

    __slots__ = (
        "body_expired",
        "finished",
        "h",
        "headers",
        "ident",
        "rid",
        "started",
        "status",
        "t0",
        "upstream",
    )

    def __init__(self, rid: str, h: dict[bytes, str]) -> None:
        self.rid = rid
        self.h = h  # the request headers gantry looks at (one pass over them)
        self.headers = [(b"x-request-id", rid.encode()), *_SECURITY_HEADERS]
        self.ident: Identity = ANONYMOUS
        self.body_expired = False
        self.started = False
        self.finished = False  # the last byte is being sent: a disconnect now is normal
        self.status = 0
        self.t0 = time.perf_counter()
        self.upstream: Any = None  # the engine response being relayed

    def close_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()


class GatewayApp:
    def __init__(
        self, cfg: GatewayConfig, pool: EnginePool, *, metrics: GatewayMetrics | None = None
    ) -> None:
        self.cfg = cfg
        self.pool = pool
        self.metrics = metrics or GatewayMetrics()
        self.tracer = Tracer(cfg.tracing)
        self.reqlog = request_logger()
        self.dispatcher = Dispatcher(
            pool,
            make_policy(cfg.routing.policy, load_factor=cfg.routing.affinity_load_factor),
            cfg.routing.policy,
            self.metrics,
            cfg,
        )
        self.pool.listeners.append(self.metrics.on_snapshot)
        self.ready = True  # false while draining
        self.active_requests = 0  # generation requests in flight (for the drain)
        self.idle = asyncio.Event()  # set whenever no generation request is in flight
        self.idle.set()
        self.idem_store = make_store(cfg.idempotency) if cfg.idempotency.enabled else None
        self.security = Security(cfg, self.metrics)
        self.auth: Authenticator = self.security.auth
        self.admin = AdminAPI(
            cfg, keys=self.security.keys, auth=self.auth, ledger=self.security.ledger
        )
        self._child_cache: dict[tuple[str, str], _Children] = {}
        self._session_header = cfg.routing.session_header.lower().encode()
        self._priority_header = cfg.admission.priority_header.lower().encode()
        self._wanted = frozenset(
            {
                b"x-request-id",
                b"content-type",
                b"idempotency-key",
                b"authorization",
                b"x-request-timeout",
                self._priority_header,
                self._session_header,
                *_FORWARD,
            }
        )
        self._openapi = orjson.dumps(openapi_document(__version__))
        self._routes: dict[str, dict[str, Handler]] = {
            "/health": {"GET": self._health},
            "/readyz": {"GET": self._readyz},
            "/metrics": {"GET": self._metrics},
            "/v1/models": {"GET": self._models},
            "/openapi.json": {"GET": self._openapi_json},
            ENDPOINT_CHAT: {"POST": self._generation(ENDPOINT_CHAT)},
            ENDPOINT_COMPLETIONS: {"POST": self._generation(ENDPOINT_COMPLETIONS)},
            ENDPOINT_EMBEDDINGS: {"POST": self._generation(ENDPOINT_EMBEDDINGS)},
            "/tokenize": {"POST": self._generation("/tokenize")},
            "/admin/keys": {"GET": self._admin, "POST": self._admin},
            "/admin/audit": {"GET": self._admin},
            "/admin/usage": {"GET": self._admin},
            "/detokenize": {"POST": self._generation("/detokenize")},
        }

    def _scan(self, scope: Scope) -> tuple[dict[bytes, str], bool]:
        """The request headers gantry uses, in one pass (first value wins), and whether
        all the headers together are within the size limits."""
        wanted = self._wanted
        out: dict[bytes, str] = {}
        size = 0
        headers = scope["headers"]
        for k, v in headers:
            size += len(k) + len(v)
            if k in wanted and k not in out:
                out[k] = v.decode("latin-1")
        return out, size <= self.cfg.security.max_header_bytes and len(headers) <= 100

    # -- ASGI entry: error handling is the outermost layer -------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        hdrs, headers_ok = self._scan(scope)
        ctx = Ctx(hdrs.get(b"x-request-id") or os.urandom(16).hex(), hdrs)
        try:
            path = scope["path"]
            if not headers_ok:
                raise HeadersTooLarge("Request headers are too large.")
            methods = self._routes.get(path)
            if methods is None and path.startswith("/admin/keys/"):
                methods = {"POST": self._admin}
            if methods is None:
                raise NotFound(f"Unknown path {scope['path']}")
            ctx.ident = self.auth.check(path, ctx.h.get(b"authorization"))
            handler = methods.get(scope["method"])
            if handler is None:
                raise MethodNotAllowed(f"Method {scope['method']} not allowed on {scope['path']}")
            await handler(scope, receive, send, ctx)
        except GantryError as err:
            if not ctx.started:
                ctx.status = err.status
                await respond(send, err.status, err.body(), headers=ctx.headers + err.headers())
        except ClientGone:
            return
        except Exception:
            log.exception("unhandled error for request %s", ctx.rid)
            if not ctx.started:
                internal = GantryError("The gateway had an internal error.")
                await respond(send, 500, internal.body(), headers=ctx.headers)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.security.start()
                    await self.pool.__aenter__()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                self.ready = False
                await self.pool.aclose()
                if self.idem_store is not None:
                    await self.idem_store.aclose()
                await self.security.aclose()  # writes every queued usage row
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- health and metadata --------------------------------------------------------------
    async def _health(self, scope: Scope, receive: Receive, send: Send, ctx: Ctx) -> None:
        await respond(send, 200, b'{"status":"ok"}', headers=ctx.headers)

    def readiness(self) -> tuple[bool, list[str]]:
        reasons = []
        if not self.ready:
            reasons.append("draining")
        snap = self.pool.snapshot
        wanted = {m for e in snap.engines for m in e.models} or {"(any)"}
        for model in sorted(wanted):
            if not snap.healthy_for(model):
                bad = [f"{e.name}: {e.reason or 'unhealthy'}" for e in snap.by_model.get(model, ())]
                reasons.append(f"model {model}: no healthy engine ({'; '.join(bad) or 'none'})")
        return not reasons, reasons

    async def _readyz(self, scope: Scope, receive: Receive, send: Send, ctx: Ctx) -> None:
        ok, reasons = self.readiness()
        body = orjson.dumps({"ready": ok, "reasons": reasons})
        await respond(send, 200 if ok else 503, body, headers=ctx.headers)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send, ctx: Ctx) -> None:
        await respond(
            send,
            200,
            self.metrics.render(),
            b"text/plain; version=0.0.4; charset=utf-8",
            headers=ctx.headers,
        )

    async def _admin(self, scope: Scope, receive: Receive, send: Send, ctx: Ctx) -> None:
        raw = b""
        if scope["method"] == "POST":
            try:
                raw = await read_body(receive, ADMIN_MAX_BODY)
            except BodyTooLarge:
                raise PayloadTooLarge(
                    f"Request body is larger than {ADMIN_MAX_BODY} bytes."
                ) from None
        query = scope.get("query_string", b"").decode("latin-1")
        status, data = await self.admin.handle(
            scope["method"], scope["path"], raw, query, ctx.ident
        )
        await respond(send, status, orjson.dumps(data), headers=ctx.headers)

    async def _openapi_json(self, scope: Scope, receive: Receive, send: Send, ctx: Ctx) -> None:
        await respond(send, 200, self._openapi, headers=ctx.headers)

    async def _models(self, scope: Scope, receive: Receive, send: Send, ctx: Ctx) -> None:
        snap = self.pool.snapshot
        now = int(time.time())
        cards: list[dict[str, Any]] = []
        for model, engines in sorted(snap.by_model.items()):
            lens = [e.max_model_len for e in engines if e.max_model_len]
            cards.append(
                {
                    "id": model,
                    "object": "model",
                    "created": now,
                    "owned_by": "gantry",
                    "root": model,
                    "parent": None,
                    "max_model_len": min(lens) if lens else None,
                }
            )
        for alias, target in sorted(self.cfg.aliases.items()):
            if target in snap.by_model:
                cards.append(
                    {
                        "id": alias,
                        "object": "model",
                        "created": now,
                        "owned_by": "gantry",
                        "root": target,
                        "parent": target,
                    }
                )
        await respond(
            send, 200, orjson.dumps({"object": "list", "data": cards}), headers=ctx.headers
        )

    # -- generation -----------------------------------------------------------------------
    def _generation(self, endpoint: str) -> Handler:
        async def handler(scope: Scope, receive: Receive, send: Send, ctx: Ctx) -> None:
            await self._generate(endpoint, scope, receive, send, ctx)

        return handler

    async def _read_json(self, ctx: Ctx, receive: Receive) -> tuple[bytes, Any]:
        ctype = ctx.h.get(b"content-type", "")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            raise UnsupportedMediaType(
                f"Content-Type must be application/json, got {ctype or 'nothing'}."
            )
        # A bare timer handle, not asyncio.timeout(): ~2 us instead of ~8 us a request.
        task = asyncio.current_task()
        timer = asyncio.get_running_loop().call_later(
            self.cfg.security.body_timeout_s, _body_expired, ctx, task
        )
        try:
            raw = await read_body(receive, self.cfg.limits.max_body_bytes)
        except asyncio.CancelledError:
            if not ctx.body_expired or task is None:
                raise
            task.uncancel()
            raise RequestTimeout("The request body did not arrive in time.") from None
        except BodyTooLarge:
            raise PayloadTooLarge(
                f"Request body is larger than {self.cfg.limits.max_body_bytes} bytes."
            ) from None
        finally:
            timer.cancel()
        try:
            return raw, orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ClientError(f"Request body is not valid JSON: {exc}", param="body") from None

    async def _generate(
        self, endpoint: str, scope: Scope, receive: Receive, send: Send, ctx: Ctx
    ) -> None:
        raw, body = await self._read_json(ctx, receive)
        idem = ctx.h.get(b"idempotency-key") if self.idem_store is not None else None
        if idem is not None:
            await self._idempotent(check_key(idem), endpoint, scope, raw, body, receive, send, ctx)
            return
        if not self.tracer.enabled:
            await self._dispatch(self._prepare(endpoint, scope, raw, body, ctx), receive, send, ctx)
            return
        parent = {k.decode(): v for k, v in ctx.h.items() if k in (b"traceparent", b"tracestate")}
        with self.tracer.span("gantry.request", parent, endpoint=endpoint, request_id=ctx.rid):
            with self.tracer.span("admission"):
                prep = self._prepare(endpoint, scope, raw, body, ctx)
            with self.tracer.span("dispatch", model=prep.route.model):
                self.tracer.inject(prep.headers)  # engines continue this trace
                await self._dispatch(prep, receive, send, ctx)

    async def _idempotent(
        self,
        key: str,
        endpoint: str,
        scope: Scope,
        raw: bytes,
        body: Any,
        receive: Receive,
        send: Send,
        ctx: Ctx,
    ) -> None:
        prep = self._prepare(endpoint, scope, raw, body, ctx)
        assert self.idem_store is not None

        async def run(send_: Send) -> None:
            await self._dispatch(prep, receive, send_, ctx)

        await run_once(
            self.idem_store,
            self.cfg.idempotency,
            f"{ctx.ident.tenant}:{key}",  # keys are per tenant: no cross-tenant replays
            fingerprint(endpoint, raw, ctx.ident.tenant),
            prep.deadline,
            send,
            ctx.headers,
            run,
            lambda outcome: self.metrics.idempotent_replays.labels(outcome).inc(),
        )

    def _prepare(self, endpoint: str, scope: Scope, raw: bytes, body: Any, ctx: Ctx) -> _Prepared:
        """Validate once and decide what to send (no I/O)."""
        try:
            info = inspect_request(endpoint, body) if endpoint.startswith("/v1") else None
        except RequestShapeError as exc:
            raise ClientError(exc.message, param=exc.param) from None
        if not isinstance(body, dict):
            raise ClientError("Request body must be a JSON object.", param="body")
        requested = info.model if info else body.get("model")
        if requested is not None and not isinstance(requested, str):
            raise ClientError("'model' must be a string.", param="model")
        snap = self.pool.snapshot
        if not requested:
            if endpoint.startswith("/v1") or len(snap.by_model) != 1:
                raise ClientError("You must provide a model parameter.", param="model")
            requested = next(iter(snap.by_model))
        model = self.cfg.aliases.get(requested, requested)
        if model not in snap.by_model:
            raise ModelNotFound(f"The model '{requested}' does not exist.", param="model")
        ident = ctx.ident
        if ident.models and not (ident.may_use(requested) or ident.may_use(model)):
            raise PermissionDenied(f"This key may not use model '{requested}'.", param="model")
        if self.cfg.redaction.enabled and self._redacts(ident, model):
            self.metrics.redactions.inc(redact_body(body, self.cfg.redaction.kinds))
            raw = orjson.dumps(body)
        stream = bool(info and info.stream)
        include_usage = bool(info and info.include_usage)
        if model != requested or (stream and not include_usage):
            body["model"] = model
            if stream:  # always ask the engine for usage, to account
                body["stream_options"] = {
                    **(body.get("stream_options") or {}),
                    "include_usage": True,
                }
            raw = orjson.dumps(body)
        headers = {"content-type": "application/json", "x-request-id": ctx.rid}
        for k, v in ctx.h.items():
            if k in _FORWARD:
                headers[k.decode()] = v
        session = ctx.h.get(self._session_header)
        route = RouteRequest(model=model, session=session or (info.user if info else None))
        deadline = time.monotonic() + self._timeout_of(ctx, stream)
        return _Prepared(
            endpoint,
            requested,
            model,
            stream,
            include_usage,
            raw,
            headers,
            route,
            deadline,
            self._priority_of(ctx),
            info.max_tokens if info else None,
        )

    def _timeout_of(self, ctx: Ctx, stream: bool) -> float:
        t = self.cfg.timeouts
        default = t.stream_total_s if stream else t.total_s
        raw = ctx.h.get(b"x-request-timeout")
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0 < value < float("inf"):
            raise ClientError(
                "X-Request-Timeout must be a positive number of seconds.", param="x-request-timeout"
            )
        return min(value, t.max_override_s)

    def _redacts(self, ident: Identity, model: str) -> bool:
        r = self.cfg.redaction
        if not r.enabled:
            return False
        scoped = r.models or r.tenants or r.keys
        return (
            not scoped or model in r.models or ident.tenant in r.tenants or (ident.key_id in r.keys)
        )

    def _priority_of(self, ctx: Ctx) -> int:
        raw = ctx.h.get(self._priority_header)
        try:
            return self.security.priority_for(ctx.ident, int(raw) if raw is not None else 0)
        except ValueError:
            raise ClientError(
                f"{self.cfg.admission.priority_header} must be an integer (lower is served first).",
                param="priority",
            ) from None

    async def _dispatch(self, p: _Prepared, receive: Receive, send: Send, ctx: Ctx) -> None:
        if not self.ready:
            ctx.headers.append((b"connection", b"close"))
            self.metrics.shed.labels(p.model, "draining").inc()
            raise ServiceUnavailable(
                "The gateway is shutting down; retry on another replica.", retry_after=1
            )
        adm = _NO_LIMITS
        if ctx.ident.key_id != "-":
            adm = await self.security.admit(
                ctx.ident, ctx.rid, len(p.raw), p.max_tokens, ctx.headers
            )
        active = self._children(p.model, p.endpoint).active
        active.inc()
        self.active_requests += 1
        self.idle.clear()
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(_watch(receive, gone, ctx))
        watcher.add_done_callback(lambda _: ctx.close_upstream())
        stats = StreamStats()
        engine = "-"
        try:
            attempt = await self._send(p, set())
            engine = attempt.engine
            if p.stream:
                engine = await self._stream(send, ctx, attempt, stats, p, gone)
            else:
                await self._unary(send, ctx, attempt, stats, p, gone)
        except EngineRejected as err:
            engine = err.engine
            ctx.status = err.status
            ctx.finished = True
            await respond(send, err.status, err.body(), headers=ctx.headers)
        except GantryError as err:
            ctx.status = err.status
            if isinstance(err, ServiceUnavailable):
                self.metrics.shed.labels(p.model, "capacity").inc()
            raise
        finally:
            watcher.cancel()
            active.dec()
            self.active_requests -= 1
            if not self.active_requests:
                self.idle.set()
            self._account(p.endpoint, p.model, engine, ctx, stats, gone.is_set())
            if adm.charges or self.security.ledger is not None:
                await self._settle(adm, p, ctx, engine, stats, gone.is_set())

    async def _settle(
        self, adm: Admitted, p: _Prepared, ctx: Ctx, engine: str, stats: StreamStats, gone: bool
    ) -> None:
        """Settle limits with the real usage and write the ledger row."""
        if not adm.charges and self.security.ledger is None:
            return
        actual = stats.prompt_tokens + stats.completion_tokens
        await self.security.settle(adm, ctx.rid, actual if actual else adm.estimate)
        ident = ctx.ident
        self.security.record(
            UsageRecord(
                time.time(),
                ctx.rid,
                ident.key_id,
                ident.tenant,
                p.model,
                engine,
                stats.prompt_tokens,
                stats.completion_tokens,
                stats.cached_tokens,
                round((time.perf_counter() - ctx.t0) * 1000, 2),
                499 if gone else ctx.status,
            )
        )

    async def _send(self, p: _Prepared, exclude: set[str]) -> Attempt:
        """Dispatch to the model, then down its fallback chain when nothing can serve it."""
        t = self.cfg.timeouts
        first_byte = t.ttft_s if p.stream else t.attempt_s
        chain = (p.model, *self.cfg.fallbacks.get(p.model, ()))
        for i, model in enumerate(chain):
            route = p.route if i == 0 else RouteRequest(model, p.route.session)
            body = p.raw if i == 0 else _with_model(p.raw, model)
            try:
                return await self.dispatcher.send(
                    route,
                    p.endpoint,
                    body,
                    p.headers,
                    first_byte_timeout=first_byte,
                    deadline=p.deadline,
                    priority=p.priority,
                    exclude=exclude,
                    tracer=self.tracer,
                )
            except ServiceUnavailable:
                if i + 1 == len(chain) or model not in self.pool.snapshot.by_model:
                    raise
                log.warning(
                    "model %s has no engine that can serve; falling back to %s", model, chain[i + 1]
                )
        raise AssertionError("unreachable")

    async def _unary(
        self,
        send: Send,
        ctx: Ctx,
        attempt: Attempt,
        stats: StreamStats,
        p: _Prepared,
        gone: asyncio.Event,
    ) -> None:
        """Read the whole answer; if the engine dies first, nothing was sent: retry."""
        tried: set[str] = set()
        loop = asyncio.get_running_loop()
        while True:
            resp = ctx.upstream = attempt.response
            remaining = max(0.001, p.deadline - time.monotonic())
            timer = loop.call_later(remaining, resp.close)
            verdict: bool | None = True
            try:
                data = await resp.read()
                verdict = False
                break
            except Exception as exc:
                if gone.is_set():
                    verdict = None
                    return
                if time.monotonic() >= p.deadline:
                    raise EngineTimeout(f"engine did not finish within {remaining:g}s") from None
                log.warning(
                    "engine %s failed mid-answer (%s); retrying", attempt.engine, type(exc).__name__
                )
            finally:
                timer.cancel()
                self.dispatcher.done(attempt.engine, verdict)
            tried.add(attempt.engine)
            self.metrics.upstream_errors.labels(attempt.engine, "mid_answer").inc()
            self.metrics.retries.labels(attempt.engine, "mid_answer").inc()
            attempt = await self._send(p, tried)
        read_usage_tail(data, stats)
        if p.requested != p.model:
            data = _rename_model(data, p.model, p.requested)
        ctx.status = resp.status
        ctx.finished = True
        await respond(send, resp.status, data, headers=ctx.headers)

    async def _stream(
        self,
        send: Send,
        ctx: Ctx,
        attempt: Attempt,
        stats: StreamStats,
        p: _Prepared,
        gone: asyncio.Event,
    ) -> str:
        """Relay; before the first token, a failing engine is swapped for another."""
        ctx.status = attempt.response.status
        await start_stream(send, attempt.response.status, ctx.headers)
        ctx.started = True
        t = self.cfg.timeouts
        itl = self.metrics.itl.labels(p.model)
        tried: set[str] = set()

        async def write(data: bytes) -> None:
            await stream_chunk(send, data)

        while True:
            ctx.upstream = attempt.response
            verdict: bool | None = None  # engine failed? None: no verdict (client left)
            retry = False
            try:
                await relay(
                    attempt.response.next_chunk,
                    write,
                    stats,
                    pass_usage=p.include_usage,
                    keepalive_s=t.keepalive_interval_s,
                    ttft_s=t.ttft_s,
                    idle_s=t.idle_s,
                    deadline=p.deadline,
                    itl_observe=itl.observe,
                )
                verdict = stats.error is not None
            except FailedBeforeFirstToken as exc:
                if not gone.is_set():
                    verdict, retry = True, True
                    log.warning(
                        "engine %s failed before the first token (%s); retrying",
                        attempt.engine,
                        exc,
                    )
            except Exception as exc:
                if not gone.is_set():
                    verdict = True
                    stats.error = f"upstream failed mid-stream: {type(exc).__name__}"
                    await write(error_event(stats.error) + encode_done())
            finally:
                attempt.response.close()
                self.dispatcher.done(attempt.engine, verdict)
            if not retry:
                break
            tried.add(attempt.engine)
            self.metrics.upstream_errors.labels(attempt.engine, "before_first_token").inc()
            self.metrics.retries.labels(attempt.engine, "before_first_token").inc()
            try:
                attempt = await self._send(p, tried)
            except GantryError as err:
                stats.error = err.message
                await write(error_event(err.message, err.type, err.status) + encode_done())
                break
        ctx.finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return attempt.engine

    def _account(
        self,
        endpoint: str,
        model: str,
        engine: str,
        ctx: Ctx,
        stats: StreamStats,
        disconnected: bool,
    ) -> None:
        dur = time.perf_counter() - ctx.t0
        status = 499 if disconnected else ctx.status
        m = self._children(model, endpoint)
        m.count(status).inc()
        m.duration.observe(dur)
        if stats.first_token_at is not None:
            m.ttft.observe(stats.first_token_at - ctx.t0)
        if stats.prompt_tokens:
            m.prompt.inc(stats.prompt_tokens)
            m.completion.inc(stats.completion_tokens)
            if stats.cached_tokens:
                m.cached.inc(stats.cached_tokens)
        if disconnected:
            self.metrics.disconnects.labels(model).inc()
        self.reqlog.info(
            "request",
            request_id=ctx.rid,
            endpoint=endpoint,
            model=model,
            engine=engine,
            status=status,
            latency_ms=round(dur * 1000, 2),
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=stats.completion_tokens,
            cached_tokens=stats.cached_tokens,
            error=stats.error,
        )

    def _children(self, model: str, endpoint: str) -> _Children:
        key = (model, endpoint)
        ch = self._child_cache.get(key)
        if ch is None:
            if len(self._child_cache) >= 1024:  # bounded: models x endpoints seen
                self._child_cache.clear()
            ch = self._child_cache[key] = _Children(self.metrics, model, endpoint)
        return ch


class _Children:
    """Metric children bound to one (model, endpoint): labels() costs ~1.5 us a call."""

    __slots__ = (
        "_by_status",
        "_endpoint",
        "_m",
        "_model",
        "active",
        "cached",
        "completion",
        "duration",
        "prompt",
        "ttft",
    )

    def __init__(self, m: GatewayMetrics, model: str, endpoint: str) -> None:
        self._m, self._model, self._endpoint = m, model, endpoint
        self._by_status: dict[int, Any] = {}
        self.duration = m.duration.labels(model, endpoint)
        self.ttft = m.ttft.labels(model)
        self.prompt = m.tokens.labels(model, "prompt")
        self.completion = m.tokens.labels(model, "completion")
        self.cached = m.tokens.labels(model, "cached")
        self.active = m.active.labels(model)

    def count(self, status: int) -> Any:
        c = self._by_status.get(status)
        if c is None:
            c = self._by_status[status] = self._m.requests.labels(
                self._model, self._endpoint, str(status)
            )
        return c


def _body_expired(ctx: Ctx, task: asyncio.Task[Any] | None) -> None:
    ctx.body_expired = True
    if task is not None:
        task.cancel()


def _with_model(raw: bytes, model: str) -> bytes:
    body = orjson.loads(raw)
    body["model"] = model
    return orjson.dumps(body)


def _rename_model(data: bytes, served: str, requested: str) -> bytes:
    try:
        parsed = orjson.loads(data)
        if isinstance(parsed, dict) and parsed.get("model") == served:
            parsed["model"] = requested
            return orjson.dumps(parsed)
    except orjson.JSONDecodeError:
        pass
    return data


def read_usage_tail(data: bytes, stats: StreamStats) -> None:
    """Token counts from a completion body without parsing all of it (usage is last)."""
    pos = data.rfind(b'"usage"')
    if pos < 0:
        return
    for key, value in _USAGE_RE.findall(data, pos):
        setattr(stats, key.decode(), int(value))


async def _watch(receive: Receive, gone: asyncio.Event, ctx: Ctx) -> None:
    """Wait for the client to disconnect before the response completes."""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            if not ctx.finished:
                gone.set()
            return


__all__ = ["GatewayApp"]
