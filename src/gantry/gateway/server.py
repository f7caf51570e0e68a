"""Run the gateway: embedded engines if none are configured, then one or N workers.

Shutdown is a designed path. On SIGTERM each worker:
1. turns ``/readyz`` to 503 at once, and keeps serving for ``shutdown.readiness_delay_s``
   (time for load balancers and Kubernetes endpoints to stop sending new requests);
2. then refuses new generation requests with 503, ``Retry-After`` and ``Connection:
   close``, stops listening, closes idle keep-alive connections;
3. lets in-flight requests, streams included, finish for up to ``shutdown.grace_s``;
4. then stops; ``gantry_drain_duration_seconds`` records how long it took.
SIGINT (Ctrl-C at a terminal) skips the readiness delay. A second signal stops at once.
The parent stops the embedded engines after every worker has exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import ssl
import time
from collections.abc import Callable
from typing import Any

from gantry.config import ConfigSource, GatewayConfig
from gantry.errors import ConfigError
from gantry.gateway.accounting import Record
from gantry.gateway.embedded import EmbeddedEngines
from gantry.gateway.http import HttpServer
from gantry.gateway.pipeline import SECURITY_HEADERS, Gateway
from gantry.observability import setup_logging

log = logging.getLogger("gantry.serve")


def check_workers(cfg: GatewayConfig) -> None:
    """Several workers must share limits and idempotency state: refuse memory stores."""
    if cfg.workers <= 1:
        return
    needs = []
    if cfg.idempotency.enabled and cfg.idempotency.store == "memory":
        needs.append("idempotency.store: redis (or idempotency.enabled: false)")
    if cfg.security.auth == "required" and cfg.ratelimit.store == "memory":
        needs.append("ratelimit.store: redis")
    if needs:
        raise ConfigError(
            f"workers: {cfg.workers} workers would each keep their own limits and "
            f"idempotency keys; set {' and '.join(needs)}"
        )


def _tune_gc() -> None:
    """Move everything alive at start-up (modules, config, app) out of the collector's
    view, so full collections scan only request-time objects: measured p99 at 64
    connections went from ~60 ms to ~35 ms (benchmarks/gateway_overhead.py)."""
    gc.collect()
    gc.freeze()


def _ssl_context(cfg: GatewayConfig) -> ssl.SSLContext | None:
    if not cfg.ssl_certfile:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile)
    return ctx


Loader = Callable[[], GatewayConfig]  # usually a ConfigSource


class Worker:
    """One gateway process: the pipeline, the HTTP front, signals, reloads and the drain."""

    def __init__(self, cfg: GatewayConfig, sock: Any = None, loader: Loader | None = None) -> None:
        self.cfg = cfg
        self.sock = sock
        self.gateway = Gateway(cfg)
        self.gateway.loader = loader
        self.server: HttpServer | None = None
        self._signal = asyncio.Event()
        self._reloads: set[asyncio.Task[None]] = set()
        self._interactive = False
        self._signals = 0

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        self._interactive = self._interactive or signum == signal.SIGINT
        if self._signals == 1:
            self.gateway.endpoints.draining = True  # readiness 503 at once
        self._signal.set()

    def _on_reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> None:
        """SIGHUP: read the configuration again; an invalid one changes nothing."""
        if self.gateway.loader is None:
            log.warning("SIGHUP: no configuration source to reload from")
            return
        try:
            plan = await self.gateway.reconfigure(self.gateway.loader())
        except ConfigError as exc:
            log.error("config reload refused, the running configuration stays: %s", exc)
            return
        log.warning(
            "config reloaded: %s",
            ", ".join(
                [
                    *plan.sections,
                    *(f"+engine {s.name or s.url}" for s in plan.added),
                    *(f"-engine {n}" for n in plan.removed),
                ]
            )
            or "no change",
        )

    def _refused(self, status: int, message: str) -> None:
        rec = Record("-", "other", time.perf_counter())
        rec.status, rec.error = status, message
        self.gateway.accounting.finish(rec)

    async def run(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        async with self.gateway:
            self.server = server = HttpServer(
                self.gateway.handle,
                wanted=self.gateway.wanted,
                static_headers=SECURITY_HEADERS,
                max_header_bytes=cfg.security.max_header_bytes,
                max_url_bytes=cfg.limits.max_url_bytes,
                max_body_bytes=cfg.limits.max_body_bytes,
                body_limits=self.gateway.body_limits,
                header_timeout_s=cfg.security.body_timeout_s,
                keepalive_s=cfg.limits.keepalive_timeout_s,
                on_refused=self._refused,
            )
            try:
                await server.start(
                    host=cfg.host, port=cfg.port, sock=self.sock, ssl_context=_ssl_context(cfg)
                )
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}"
                ) from None
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
            loop.add_signal_handler(signal.SIGHUP, self._on_reload)
            log.info("gantry gateway worker ready on %s:%d", cfg.host, server.port)
            _tune_gc()
            await self._signal.wait()
            await self._drain(server)

    async def _drain(self, server: HttpServer) -> None:
        c = self.cfg.shutdown
        start = time.monotonic()
        delay = 0.0 if self._interactive else c.readiness_delay_s
        log.warning(
            "draining: readiness is 503; serving %.1fs more, %d request(s) in flight",
            delay,
            server.active,
        )
        self._signal.clear()
        if delay > 0 and self._signals == 1:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._signal.wait(), delay)  # a second signal: now
        self.gateway.start_drain()
        server.draining = True
        server.stop_listening()
        server.close_idle()
        grace = c.grace_s if self._signals == 1 else 0.0
        if server.active and grace > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_either(server.idle.wait(), self._signal.wait()), grace)
        left = server.active
        await server.aclose(0.0)
        took = time.monotonic() - start
        self.gateway.metrics.drain_seconds.set(took)
        log.warning("drained in %.2fs; %d request(s) cut off at the grace limit", took, left)


async def _either(a: Any, b: Any) -> None:
    tasks = [asyncio.ensure_future(a), asyncio.ensure_future(b)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def run_worker(cfg: GatewayConfig, sock: Any = None, loader: Loader | None = None) -> None:
    """Run one worker until it has drained (in this process)."""
    import uvloop

    uvloop.run(Worker(cfg, sock, loader).run())


def serve(cfg: GatewayConfig, loader: Loader | None = None) -> None:
    setup_logging(cfg.logging.level, json_format=cfg.logging.json_format)
    check_workers(cfg)
    embedded = None
    # Signals that arrive while engines start or after the worker exits must not skip
    # the cleanup below.
    previous = {
        s: signal.signal(s, _note_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    launched: list[Any] = []
    try:
        started: tuple[Any, ...] = ()
        for spec in cfg.launch:  # engines gantry starts itself, on GPUs or simulated
            from gantry.supervisor import SupervisorThread

            thread = SupervisorThread(spec)
            launched.append(thread)
            started = (*started, *thread.start(ready_timeout_s=spec.load_timeout_s))
        if cfg.is_embedded:
            embedded = EmbeddedEngines(cfg.embedded)
            started = embedded.start()
        if started:
            cfg = cfg.model_copy(update={"engines": (*cfg.engines, *started)})
            if isinstance(loader, ConfigSource):  # a reloaded file holds none of these
                loader = dataclasses.replace(loader, engines=started)
        log.info(
            "gantry gateway listening on http://%s:%d (%d engine(s), %d worker(s))",
            cfg.host,
            cfg.port,
            len(cfg.engines),
            cfg.workers,
        )
        if cfg.workers > 1:
            from gantry.gateway.workers import supervise

            supervise(cfg, loader)
        else:
            run_worker(cfg, loader=loader)
    finally:
        if embedded is not None:
            embedded.stop()
        for thread in launched:
            thread.stop()
        for s, h in previous.items():
            signal.signal(s, h)


def _note_signal(signum: int, _frame: object) -> None:
    log.warning("signal %d: shutting down", signum)
