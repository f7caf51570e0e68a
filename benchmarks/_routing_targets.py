"""What `routing.py` measures and routes through: simulated engines (with their metrics
and admin endpoints), the routers in front of them, and the oracle's placement."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from gantry.engines.h1 import H1Transport
from gantry.engines.transport import EngineRequest, EngineResponse
from gantry.netutil import free_port
from gantry.protocol import block_hashes

VLLM_ROUTER_VERSION = "0.1.17"
MODEL = "llama"


def http_json(url: str, body: bytes | None = None, timeout: float = 10) -> Any:
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return orjson.loads(r.read())


def wait_until(check: Any, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(what)


def ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when this benchmark dies, however it dies."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(name: str, args: list[str], workdir: Path, env: Mapping[str, str] = {}) -> Proc:
    log = workdir / f"{name}.log"
    with open(log, "wb") as fh:
        p = subprocess.Popen(
            args, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **env}, preexec_fn=_die_with_parent,
        )  # fmt: skip
    return Proc(name, p, log)


def started(p: Proc, check: Any, timeout: float, what: str) -> Proc:
    """``p`` once ``check()`` holds; stopped if it never does."""
    try:
        wait_until(check, timeout, what, p.proc)
    except BaseException:
        p.stop()
        raise
    return p


# -- engines ------------------------------------------------------------------------------


@dataclass
class Engine:
    name: str
    port: int
    kv_port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def kv_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.kv_port}"


def start_engines(n: int, sim_args: list[str], workdir: Path) -> list[Engine]:
    engines = []
    for i in range(n):
        port, kv = free_port(), free_port()
        args = [sys.executable, "-m", "gantry", "sim", "--port", str(port), *sim_args]
        args += ["--served-model-name", MODEL, "--kv-events", f"tcp://*:{kv}", "--enable-admin"]
        args += ["--seed", str(i)]
        engines.append(Engine(f"e{i}", port, kv, spawn(f"engine-{i}", args, workdir)))
    try:
        for e in engines:
            wait_until(lambda e=e: ok(e.url + "/health"), 60, f"engine {e.name}", e.proc.proc)
    except BaseException:
        for e in engines:
            e.proc.stop()
        raise
    return engines


def scrape(e: Engine) -> dict[str, float]:
    """The engine's counters this benchmark reads, summed over labels."""
    with urllib.request.urlopen(e.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    want = {
        "vllm:prefix_cache_hits_total": "hits",
        "vllm:prefix_cache_queries_total": "queries",
        "vllm:request_success_total": "requests",
        "vllm:prompt_tokens_total": "prompt_tokens",
    }
    out = dict.fromkeys(want.values(), 0.0)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in want:
                out[want[s.name]] += s.value
    stats = http_json(e.url + "/sim/stats")
    out["step_model_s"] = stats["step_seconds_model"]
    out["step_wall_s"] = stats["step_seconds_wall"]
    out["steps"] = stats["steps"]
    out["busy"] = stats["running"] + stats["waiting"] + stats["in_flight"]
    return out


def reset_caches(engines: list[Engine]) -> None:
    """Wait for every engine to be idle, then clear its prefix cache."""
    for e in engines:
        wait_until(
            lambda e=e: http_json(e.url + "/reset_prefix_cache", b"")["success"],
            120,
            f"{e.name} idle and reset",
        )


# -- routers ----------------------------------------------------------------------------


def gantry_router(policy: str, engines: list[Engine], workdir: Path) -> tuple[Proc, str]:
    port = free_port()
    cfg = workdir / f"gantry-{policy}.yaml"
    lines = ["engines:"]
    for e in engines:
        lines.append(f"  - {{url: {e.url}, name: {e.name}, kv_events: '{e.kv_endpoint}'}}")
    lines.append(f"routing: {{policy: {policy}}}")
    cfg.write_text("\n".join(lines) + "\n")
    env = {
        "GANTRY_SECURITY__AUTH": "off",
        "GANTRY_SECURITY__DATABASE_URL": f"sqlite:///{workdir}/gantry-{port}.db",
        "GANTRY_SHUTDOWN__READINESS_DELAY_S": "0",
    }
    args = [sys.executable, "-m", "gantry", "serve", "-c", str(cfg), "--port", str(port)]
    p = spawn(f"gantry-{policy}", [*args, "--no-request-logs"], workdir, env)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:  # kv_aware: subscribed to every engine before the run starts
        return ok(url + "/readyz") and (policy != "kv_aware" or _kv_connected(url, engines))

    return started(p, ready, 60, f"gantry serve --policy {policy}"), url


def _kv_connected(url: str, engines: list[Engine]) -> bool:
    """The gateway's subscriber has connected to every engine's publisher."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    up = set()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "gantry_kv_events_total" and s.labels.get("kind") == "up":
                up.add(s.labels.get("engine"))
    return all(e.name in up for e in engines)


def vllm_router_binary(venv: Path, install: bool) -> Path | None:
    """vllm-router from PyPI, pinned, in its own venv (created when ``install``)."""
    exe = venv / "bin" / "vllm-router"
    py = venv / "bin" / "python"
    check = "import importlib.metadata as m; print(m.version('vllm-router'))"
    if exe.exists():
        got = subprocess.run([py, "-c", check], capture_output=True, text=True).stdout.strip()
        if got == VLLM_ROUTER_VERSION:
            return exe
    if not install:
        return None
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, f"vllm-router=={VLLM_ROUTER_VERSION}"], check=True)
    return exe


def vllm_router(exe: Path, policy: str, engines: list[Engine], workdir: Path) -> tuple[Proc, str]:
    port, prom = free_port(), free_port()
    args = [str(exe), "--worker-urls", *(e.url for e in engines), "--policy", policy]
    args += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    args += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(prom)]
    if policy == "kv_aware":
        for e in engines:
            args += ["--kv-event-source", f"{e.url}={e.kv_endpoint}"]
        args += ["--kv-event-model", MODEL]
    p = spawn(f"vllm-router-{policy}", args, workdir)
    url = f"http://127.0.0.1:{port}"
    return started(p, lambda: ok(url + "/readiness"), 90, f"vllm-router --policy {policy}"), url


# -- the oracle -------------------------------------------------------------------------


@dataclass
class OracleStats:
    decisions: int = 0
    by_cache: int = 0  # the chosen engine held more of the prompt than the least loaded
    match_ms: list[float] = field(default_factory=list)


class _Tracked:
    """An engine response that tells the oracle when its first bytes came (its prefill
    is over) and when it was closed (no longer in flight)."""

    def __init__(self, resp: EngineResponse, first: Any, done: Any) -> None:
        self._resp, self._first, self._done = resp, first, done
        self.status, self.headers = resp.status, resp.headers

    def _started(self) -> None:
        if self._first is not None:
            self._first()
            self._first = None

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        finally:
            self.close()

    async def iter_chunks(self) -> Any:
        async for chunk in self._resp.iter_chunks():
            self._started()
            yield chunk

    async def next_chunk(self) -> bytes | None:
        chunk = await self._resp.next_chunk()
        self._started()
        return chunk

    def close(self) -> None:
        self._resp.close()
        self._started()
        if self._done is not None:
            self._done()
            self._done = None


class OracleTransport:
    """Client-side placement straight to the engines, from their real cache state.

    For each request it has an engine tokenize the prompt (``/tokenize``: the token ids
    the engine itself caches), hashes its blocks once, and asks every engine
    ``POST /sim/cache_match`` with those hashes: how many of the prompt's tokens its
    prefix cache holds now (a dictionary lookup per block there, so the question does
    not load the engines). The request goes where its prefill starts soonest and is
    shortest: the fewest uncached prompt tokens, counting those of the oracle's own
    requests there that have not had their first token yet (an engine's prefill queue,
    known exactly since the oracle is the only client); ties go to the larger hit, then
    the fewer requests in flight. So the largest cache hit wins unless the prefill work
    already queued on that engine outweighs it. No router process is in the path."""

    def __init__(self, engines: list[Engine]) -> None:
        self.engines = engines
        self._t = {e.name: H1Transport(e.url, max_idle=1024) for e in engines}
        self.inflight = dict.fromkeys(self._t, 0)
        self.pending = dict.fromkeys(self._t, 0)  # uncached tokens awaiting a first token
        self.stats = OracleStats()

    async def question(self, body: bytes) -> tuple[bytes, int]:
        """``/sim/cache_match``'s body for a chat or completions request, and the
        prompt's length in tokens. The token ids are the engine's own (``/tokenize``
        renders its model family's chat template and adds BOS as it does)."""
        req = orjson.loads(body)
        ask: dict[str, Any] = {"model": req.get("model")}
        if "messages" in req:
            ask["messages"] = req["messages"]
            ask["add_generation_prompt"] = req.get("add_generation_prompt", True) is not False
        else:
            ask["prompt"] = req["prompt"]
        name = self.engines[self.stats.decisions % len(self.engines)].name
        tok = EngineRequest("POST", "/tokenize", orjson.dumps(ask), _JSON, read_timeout=30)
        resp = await self._t[name].send(tok)
        ids = orjson.loads(await resp.read())["tokens"]
        salt = req.get("cache_salt")
        hashes = block_hashes(ids, 16, (("cache_salt", salt),) if salt else None, [])
        q = {"block_hashes": [h.hex() for h in hashes], "num_tokens": len(ids)}
        return orjson.dumps(q), len(ids)

    async def _match(self, name: str, body: bytes) -> int:
        req = EngineRequest("POST", "/sim/cache_match", body, _JSON, read_timeout=30)
        resp = await self._t[name].send(req)
        data = await resp.read()
        return int(orjson.loads(data)["cached_tokens"]) if resp.status == 200 else 0

    async def send(self, request: EngineRequest) -> EngineResponse:
        t = time.perf_counter()
        body, tokens = await self.question(request.body or b"{}")
        hits = await asyncio.gather(*(self._match(n, body) for n in self._t))
        self.stats.match_ms.append((time.perf_counter() - t) * 1000)
        by_name = dict(zip(self._t, hits, strict=True))
        name = self.choose(by_name, tokens)
        work = tokens - by_name[name]
        self.inflight[name] += 1
        self.pending[name] += work

        def first() -> None:
            self.pending[name] -= work

        def done() -> None:
            self.inflight[name] -= 1

        try:
            resp = await self._t[name].send(request)
        except BaseException:
            first()
            done()
            raise
        return _Tracked(resp, first, done)  # type: ignore[return-value]

    def choose(self, hits: dict[str, int], tokens: int) -> str:
        def cost(n: str) -> tuple[int, int, int, str]:
            return (self.pending[n] + tokens - hits[n], -hits[n], self.inflight[n], n)

        best = min(hits, key=cost)
        least = min(hits, key=lambda n: (self.inflight[n], n))
        self.stats.decisions += 1
        self.stats.by_cache += hits[best] > hits[least]
        return best

    async def aclose(self) -> None:
        for t in self._t.values():
            await t.aclose()


_JSON = {"content-type": "application/json"}
