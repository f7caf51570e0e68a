"""Several gateway workers on one port: the parent binds, spawns, restarts, forwards.

Each worker is a whole gateway (its own engine pool, breakers and connections, like a
replica); limits and idempotency keys must be shared, so ``--workers`` above 1 needs the
Redis stores (``server.check_workers``). Metrics are summed over workers through
prometheus_client's multiprocess directory. A worker that dies is restarted with
exponential backoff (1 s doubling to 30 s, reset after a minute of good health); SIGTERM
and SIGINT are forwarded to every worker, and the parent exits when all have drained.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.connection import wait
from typing import Any

from gantry.config import GatewayConfig

log = logging.getLogger("gantry.workers")
_BACKOFF_MAX_S = 30.0
_HEALTHY_AFTER_S = 60.0


def _bind(cfg: GatewayConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((cfg.host, cfg.port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def _worker_main(cfg_json: str, sock: socket.socket, loader: Any = None) -> None:
    from gantry.gateway.server import run_worker
    from gantry.observability import setup_logging

    cfg = GatewayConfig.model_validate_json(cfg_json)
    setup_logging(cfg.logging.level, json_format=cfg.logging.json_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards signals
    try:
        run_worker(cfg, sock, loader)
    except Exception:
        log.exception("worker %d failed", os.getpid())
        raise SystemExit(1) from None


def backoff_s(failures: int) -> float:
    """Delay before restarting a worker that has died ``failures`` times in a row."""
    return float(min(_BACKOFF_MAX_S, 2 ** max(0, failures - 1)))


class _Slot:
    __slots__ = ("failures", "proc", "restart_at", "started")

    def __init__(self) -> None:
        self.proc: Any = None
        self.failures = 0
        self.started = 0.0
        self.restart_at = 0.0


def supervise(cfg: GatewayConfig, loader: Any = None) -> None:
    _prepare_databases(cfg)
    mpdir = tempfile.mkdtemp(prefix="gantry-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = mpdir  # before any worker imports metrics
    sock = _bind(cfg)
    ctx = multiprocessing.get_context("spawn")
    cfg_json = cfg.model_dump_json(by_alias=True)
    slots = [_Slot() for _ in range(cfg.workers)]
    stopping = False

    def start(slot: _Slot) -> None:
        slot.proc = ctx.Process(target=_worker_main, args=(cfg_json, sock, loader), daemon=False)
        slot.proc.start()
        slot.started = time.monotonic()

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for s in slots:
            if s.proc is not None and s.proc.is_alive() and s.proc.pid:
                os.kill(s.proc.pid, signum)

    def reload(signum: int, _frame: object) -> None:
        for s in slots:
            if s.proc is not None and s.proc.is_alive() and s.proc.pid:
                os.kill(s.proc.pid, signum)  # each worker reads the configuration again

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, reload)
    for s in slots:
        start(s)
    try:
        while True:
            alive = [s.proc.sentinel for s in slots if s.proc is not None and s.proc.is_alive()]
            if stopping and not alive:
                break
            if alive:
                wait(alive, timeout=1.0)
            else:
                time.sleep(0.2)  # every worker is waiting out its restart backoff
            now = time.monotonic()
            for s in slots:
                _tend(s, now, stopping, start)
    finally:
        for s in slots:
            if s.proc is not None:
                s.proc.join(5)
        sock.close()
        shutil.rmtree(mpdir, ignore_errors=True)


def _prepare_databases(cfg: GatewayConfig) -> None:
    """Migrate once here, so workers do not race to create the same tables."""
    import asyncio

    from gantry.state.sql import make_engine, migrate

    urls = {cfg.security.database_url, cfg.ledger.database_url or cfg.security.database_url}

    async def run() -> None:
        for url in urls:
            engine = make_engine(url)
            try:
                await migrate(engine)
            finally:
                await engine.dispose()

    if cfg.security.auth == "required" or cfg.ledger_on:
        asyncio.run(run())


def _tend(slot: _Slot, now: float, stopping: bool, start: Any) -> None:
    p = slot.proc
    if p is not None and p.exitcode is not None and not stopping:
        _mark_dead(p.pid)
        if now - slot.started > _HEALTHY_AFTER_S:
            slot.failures = 0
        slot.failures += 1
        slot.restart_at = now + backoff_s(slot.failures)
        log.error(
            "worker pid %s exited with %s; restarting in %.0fs%s",
            p.pid,
            p.exitcode,
            slot.restart_at - now,
            " (crash loop)" if slot.failures >= 5 else "",
        )
        slot.proc = None
    if slot.proc is None and not stopping and now >= slot.restart_at:
        start(slot)


def _mark_dead(pid: int | None) -> None:
    if pid is None:
        return
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
    except Exception:  # the metrics directory is best effort
        log.debug("could not mark worker %s dead in the metrics directory", pid)
