"""The chaos suite: 3 simulated engines behind one gateway, under steady load.

1. ``kill``: SIGKILL an engine every few seconds (and bring it back);
2. ``hang``: one engine accepts requests and never answers;
3. ``errors``: 5xx bursts and latency spikes on two engines;
4. ``overload``: ten times the configured capacity;
5. ``sigterm``: the gateway is told to stop in the middle of the load.

``run_suite(short=True)`` is the form `make test` runs; benchmarks/chaos.py runs the
long form and prints the table in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gantry.bench.chaos import Tally, steady_load
from gantry.netutil import free_port

GATEWAY_CFG = """
logging: {{level: warning}}
security: {{auth: "off", database_url: "sqlite:///{db}"}}
health: {{interval_s: 0.25, failure_threshold: 1, success_threshold: 1}}
timeouts: {{attempt_s: 2, ttft_s: 2, idle_s: 2, total_s: 15, stream_total_s: 15,
           keepalive_interval_s: 0}}
retry: {{attempts: 3, budget_ratio: 0.5, budget_min_per_s: 20}}
breaker: {{failure_threshold: 3, cooldown_s: 2}}
shutdown: {{grace_s: 15}}
admission: {{max_inflight_per_engine: {inflight}, max_waiting_per_model: {waiting},
            queue_timeout_s: 3}}
"""


def _wait(url: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def _post(url: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    urllib.request.urlopen(req, timeout=5).read()


@dataclass
class Stack:
    """Engines and a gateway as child processes on loopback ports."""

    engines: int = 3
    speedup: float = 5.0
    inflight: int = 256
    waiting: int = 100
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    gateway: subprocess.Popen[bytes] | None = None
    gw_port: int = 0
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gantry-chaos-")))

    def _sim(self, i: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gantry",
                "sim",
                "--port",
                str(self.ports[i]),
                "--served-model-name",
                "m",
                "--speedup",
                str(self.speedup),
                "--enable-admin",
                "--seed",
                str(i),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def __enter__(self) -> Stack:
        self.ports = [free_port() for _ in range(self.engines)]
        self.procs = [self._sim(i) for i in range(self.engines)]
        for p in self.ports:
            _wait(f"http://127.0.0.1:{p}/health")
        cfg = self.tmp / "gantry.yaml"
        engines = "".join(
            f"  - {{url: 'http://127.0.0.1:{p}', name: e{i}}}\n" for i, p in enumerate(self.ports)
        )
        cfg.write_text(
            "engines:\n"
            + engines
            + GATEWAY_CFG.format(
                inflight=self.inflight, waiting=self.waiting, db=self.tmp / "gantry.db"
            )
        )
        self.gw_port = free_port()
        self.log = open(self.tmp / "gateway.log", "wb")
        self.gateway = subprocess.Popen(
            [sys.executable, "-m", "gantry", "serve", "-c", str(cfg), "--port", str(self.gw_port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        _wait(self.url + "/readyz")
        return self

    def __exit__(self, *exc: object) -> None:
        for p in [self.gateway, *self.procs]:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        self.log.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gw_port}"

    def engine_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def kill(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()

    def restart(self, i: int) -> None:
        self.procs[i] = self._sim(i)

    def fault(self, i: int, **patch: Any) -> None:
        _post(self.engine_url(i) + "/sim/faults", {"reset": True, **patch})

    def metrics(self) -> str:
        return _get(self.url + "/metrics")


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


@dataclass
class Outcome:
    name: str
    tally: Tally
    checks: dict[str, bool]

    @property
    def passed(self) -> bool:
        return all(self.checks.values()) and self.tally.lost == 0


async def _kill(stack: Stack, duration: float, rate: float) -> Outcome:
    async def chaos() -> None:
        i = 0
        end = time.monotonic() + duration
        while time.monotonic() < end - 2:
            await asyncio.sleep(1.5)
            stack.kill(i % stack.engines)
            await asyncio.sleep(1.0)
            stack.restart(i % stack.engines)
            i += 1

    load = asyncio.create_task(
        steady_load(stack.url, "m", rate=rate, duration=duration, watch_pid=_pid(stack))
    )
    await chaos()
    t = await load
    return Outcome(
        "kill -9 an engine every few s",
        t,
        {"no failed non-streaming requests": t.failed_unary == 0},
    )


async def _hang(stack: Stack, duration: float, rate: float) -> Outcome:
    stack.fault(0, hang_rate=1.0)
    try:
        t = await steady_load(stack.url, "m", rate=rate, duration=duration, watch_pid=_pid(stack))
    finally:
        stack.fault(0)
    m = stack.metrics()
    return Outcome(
        "one engine hangs",
        t,
        {
            "hung engine's breaker opened": _metric(
                m, "gantry_breaker_transitions_total", engine="e0", state="open"
            )
            >= 1,
            "no failed requests": t.failed == 0,
        },
    )


async def _errors(stack: Stack, duration: float, rate: float) -> Outcome:
    for i in (1, 2):
        stack.fault(i, error_rate={"503": 0.3, "500": 0.1}, spike_rate=0.1, spike_ms=800)
    before = stack.metrics()
    try:
        t = await steady_load(stack.url, "m", rate=rate, duration=duration, watch_pid=_pid(stack))
    finally:
        for i in (1, 2):
            stack.fault(i)
    m = stack.metrics()
    retries = _metric(m, "gantry_upstream_retries_total") - _metric(
        before, "gantry_upstream_retries_total"
    )
    budget = 0.5 * t.sent + 20 * duration + 10  # ratio x requests + floor x seconds + burst
    return Outcome(
        "5xx bursts and latency spikes",
        t,
        {
            "a breaker opened": _metric(m, "gantry_breaker_transitions_total", state="open") >= 1,
            "retries within budget": retries <= budget,
        },
    )


async def _overload(stack: Stack, duration: float, rate: float) -> Outcome:
    t = await steady_load(
        stack.url,
        "m",
        rate=rate,
        duration=duration,
        tokens=64,
        stream_share=0.3,
        watch_pid=_pid(stack),
    )
    return Outcome(
        "overload at 10x capacity",
        t,
        {
            "shed with Retry-After": t.shed > 0,
            "admitted requests met their timeouts": max(t.latencies, default=0) <= 15.0,
            "gateway stayed up": stack.gateway is not None and stack.gateway.poll() is None,
        },
    )


async def _sigterm(stack: Stack, duration: float, rate: float) -> Outcome:
    async def stop_midway() -> None:
        await asyncio.sleep(duration / 2)
        assert stack.gateway is not None
        stack.gateway.send_signal(signal.SIGTERM)

    pid = _pid(stack)
    load = asyncio.create_task(
        steady_load(stack.url, "m", rate=rate, duration=duration, tokens=64, watch_pid=pid)
    )
    await stop_midway()
    t = await load
    assert stack.gateway is not None
    code = stack.gateway.wait(30)
    return Outcome("SIGTERM during load", t, {"exited cleanly": code in (0, -signal.SIGTERM)})


def _pid(stack: Stack) -> int | None:
    return stack.gateway.pid if stack.gateway is not None else None


SCENARIOS = {
    "kill": _kill,
    "hang": _hang,
    "errors": _errors,
    "overload": _overload,
    "sigterm": _sigterm,
}


def run_scenario(name: str, *, duration: float, rate: float) -> Outcome:
    kw: dict[str, Any] = {}
    if name == "overload":
        kw = {"inflight": 2, "waiting": 20, "speedup": 2.0}
    with Stack(**kw) as stack:
        return asyncio.run(SCENARIOS[name](stack, duration, rate))


def run_suite(short: bool = True) -> list[Outcome]:
    duration = 6.0 if short else 40.0
    rates = {"kill": 30.0, "hang": 30.0, "errors": 30.0, "overload": 120.0, "sigterm": 30.0}
    return [run_scenario(n, duration=duration, rate=rates[n]) for n in SCENARIOS]


__all__ = ["Outcome", "Stack", "run_scenario", "run_suite"]
