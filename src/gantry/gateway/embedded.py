"""The embedded default: simulated engines as child processes when none is configured."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
import urllib.request

from gantry.config import EmbeddedConfig, EngineSpec
from gantry.errors import ConfigError
from gantry.netutil import free_port

log = logging.getLogger("gantry.embedded")


class EmbeddedEngines:
    """Owns the child processes: start, wait until they answer, stop on exit."""

    def __init__(self, cfg: EmbeddedConfig) -> None:
        self.cfg = cfg
        self.procs: list[subprocess.Popen[bytes]] = []
        self.specs: tuple[EngineSpec, ...] = ()

    def __enter__(self) -> EmbeddedEngines:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, ready_timeout: float = 60.0) -> tuple[EngineSpec, ...]:
        c = self.cfg
        specs = []
        for i in range(c.engines):
            port = free_port()
            args = [
                sys.executable,
                "-m",
                "gantry",
                "sim",
                "--port",
                str(port),
                "--model",
                c.model,
                "--gpu",
                c.gpu,
                "--served-model-name",
                c.served_model_name,
                "--profile",
                c.profile,
                "--speedup",
                str(c.speedup),
                "--seed",
                str(i),
                "--log-level",
                "warning",
                *c.extra_args,
            ]
            self.procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL))
            specs.append(
                EngineSpec(
                    url=f"http://127.0.0.1:{port}", name=f"sim-{i}", models=(c.served_model_name,)
                )
            )
            log.warning(
                "embedded default: started SIMULATED engine sim-%d (%s on a simulated %s, no "
                "GPU) at http://127.0.0.1:%d",
                i,
                c.model,
                c.gpu,
                port,
            )
        self.specs = tuple(specs)
        deadline = time.monotonic() + ready_timeout
        for spec, proc in zip(self.specs, self.procs, strict=True):
            while not _healthy(spec.url):
                if proc.poll() is not None:
                    self.stop()
                    raise ConfigError(f"simulated engine {spec.name} exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise ConfigError(f"simulated engine {spec.name} did not start in time")
                time.sleep(0.1)
        return self.specs

    def stop(self, timeout: float = 10.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.procs:
            log.warning("embedded default: stopped %d simulated engine(s)", len(self.procs))
        self.procs.clear()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=0.5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


__all__ = ["EmbeddedEngines"]
