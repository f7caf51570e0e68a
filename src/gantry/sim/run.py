"""Run one simulated engine under uvicorn, or a local cluster of N engine processes.

Cluster process model: the parent starts N child processes (``gantry sim`` with
``--port base+i``), forwards SIGINT/SIGTERM to them, and exits when they have all
exited. Each child is a full engine with its own port, metrics and KV cache.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time

import uvicorn

from gantry.sim.server import SimServer
from gantry.sim.settings import SimSettings

log = logging.getLogger("gantry.sim")


def serve(settings: SimSettings, host: str, port: int, *, log_level: str = "warning") -> None:
    resolved = settings.resolve()  # raises SimConfigError before anything listens
    if settings.slow_start_s > 0:
        log.warning("fault injection: slow start, not listening for %.1fs", settings.slow_start_s)
        time.sleep(settings.slow_start_s)
    app = SimServer(resolved)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        loop="uvloop" if _has_uvloop() else "asyncio",
        http="httptools",
        timeout_keep_alive=5,
        backlog=4096,
    )
    server = uvicorn.Server(config)
    asyncio.run(server.serve()) if not _has_uvloop() else _run_uvloop(server)


def _run_uvloop(server: uvicorn.Server) -> None:
    import uvloop

    uvloop.run(server.serve())


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run_cluster(argv: list[str], engines: int, base_port: int, kv_events: str | None) -> int:
    """Start ``engines`` children of ``gantry sim`` (argv without --engines/--port)."""
    procs: list[subprocess.Popen[bytes]] = []
    for i in range(engines):
        args = [sys.executable, "-m", "gantry", "sim", *argv, "--port", str(base_port + i)]
        if kv_events:
            head, _, port = kv_events.rpartition(":")
            args += ["--kv-events", f"{head}:{int(port) + i}"]
        procs.append(subprocess.Popen(args))
        print(f"engine {i}: http://127.0.0.1:{base_port + i} (pid {procs[-1].pid})", flush=True)

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    code = 0
    for p in procs:
        rc = p.wait()
        # uvicorn re-raises the signal it shut down on: dying by it is a clean stop.
        if rc not in (0, -signal.SIGTERM, -signal.SIGINT):
            code = max(code, abs(rc))
    return code


__all__ = ["run_cluster", "serve"]
