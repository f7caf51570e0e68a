"""Run the gateway: embedded engines if none are configured, then uvicorn.

With ``workers > 1`` uvicorn forks worker processes; each builds the same app from
the resolved configuration (handed over once, as JSON, in ``GANTRY_RESOLVED_CONFIG``)
and metrics are aggregated through prometheus_client's multiprocess directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from typing import Any

import orjson
import uvicorn

from gantry.config import GatewayConfig
from gantry.engines.pool import EnginePool
from gantry.gateway.app import GatewayApp
from gantry.gateway.embedded import EmbeddedEngines
from gantry.observability import setup_logging

log = logging.getLogger("gantry.serve")
_RESOLVED = "GANTRY_RESOLVED_CONFIG"


def build_app(cfg: GatewayConfig) -> GatewayApp:
    return GatewayApp(cfg, EnginePool(cfg.engines, cfg.health))


def worker_app() -> GatewayApp:
    """uvicorn factory for worker processes."""
    cfg = GatewayConfig.model_validate(orjson.loads(os.environ[_RESOLVED]))
    setup_logging(cfg.logging.level, json_format=cfg.logging.json_format)
    return build_app(cfg)


def _uvicorn_kwargs(cfg: GatewayConfig) -> dict[str, Any]:
    return dict(
        host=cfg.host,
        port=cfg.port,
        log_level="warning",
        access_log=False,
        http="httptools",
        loop="uvloop",
        lifespan="on",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=30,
        backlog=4096,
        server_header=False,
        proxy_headers=False,
        date_header=False,
    )


def _note_signal(signum: int, _frame: object) -> None:
    log.info("received signal %d after shutdown", signum)


def serve(cfg: GatewayConfig) -> None:
    setup_logging(cfg.logging.level, json_format=cfg.logging.json_format)
    # uvicorn restores the previous handlers and re-raises the signal it shut down on;
    # with these in place that re-raise is harmless and the cleanup below always runs.
    signal.signal(signal.SIGTERM, _note_signal)
    signal.signal(signal.SIGINT, _note_signal)
    embedded = None
    if cfg.is_embedded:
        embedded = EmbeddedEngines(cfg.embedded)
        specs = embedded.start()
        cfg = cfg.model_copy(update={"engines": specs})
    log.info(
        "gantry gateway listening on http://%s:%d (%d engine(s), %d worker(s))",
        cfg.host,
        cfg.port,
        len(cfg.engines),
        cfg.workers,
    )
    mpdir = None
    try:
        if cfg.workers > 1:
            mpdir = tempfile.mkdtemp(prefix="gantry-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = mpdir
            os.environ[_RESOLVED] = cfg.model_dump_json(by_alias=True)
            uvicorn.run(
                "gantry.gateway.server:worker_app",
                factory=True,
                workers=cfg.workers,
                **_uvicorn_kwargs(cfg),
            )
        else:
            server = uvicorn.Server(uvicorn.Config(build_app(cfg), **_uvicorn_kwargs(cfg)))
            server.run()
    finally:
        if embedded is not None:
            embedded.stop()
        if mpdir:
            shutil.rmtree(mpdir, ignore_errors=True)
