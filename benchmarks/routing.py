"""Routing policies where placement decides the prefix-cache hit: gantry's, vllm-router's
and an oracle's, in front of the same four simulated engines.

    python benchmarks/routing.py [--repeats 3] [--quick] [--workloads tenants,chat,control]
        [--policies least_loaded,kv_aware,vllm-router:cache_aware,oracle,...]
        [--output results.json] [--markdown table.md]

* 4 engines: ``gantry sim`` Llama-3.1-8B on H100-80GB, realistic profile, KV events on,
  the KV cache as vLLM sizes it on an H100 (464,768 tokens; ``--gpu-blocks N`` sets vLLM's
  ``--num-gpu-blocks-override``); the shared prefixes (96 x 12,000 tokens, 2.5x one
  engine's cache) outgrow one engine's cache but fit in the four together;
* per run: a fresh router (``gantry serve`` with one policy, or ``vllm-router`` pinned
  from PyPI in its own venv, or the oracle: client-side placement from every engine's
  ``POST /sim/cache_match``), the engines' prefix caches cleared first, then a
  Poisson-paced open-loop workload for ``--duration`` seconds (streamed chat
  completions, ``ignore_eos``), waiting for every request to finish;
* workloads: ``tenants`` (many tenants with long system prompts, uniform popularity),
  ``chat`` (multi-turn conversations whose histories grow, with think time between
  turns, after a system prompt all share), ``control`` (unique prompts, no sharing);
* per run: TTFT and ITL percentiles, request and output-token throughput (over the
  time to the last answer), the engines' prefix-cache hit rate (``vllm:prefix_cache_*``
  deltas), the balance of load (max / mean requests per engine, from
  ``vllm:request_success_total``), and the conditions: load average, CPU used by the
  engines, the router and this client, and the engines' clock lag (wall-clock step
  time over modelled step time; above ~1.05 the simulators were CPU-starved);
* ``--repeats N``: every figure is the median over N repeats (seed = repeat number;
  policies interleaved within a repeat, so machine drift hits them alike).

Output: a markdown table per workload on stdout (and in ``--markdown``), everything in
``--output`` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import cpu_seconds
from _routing_targets import (
    MODEL,
    Engine,
    OracleTransport,
    Proc,
    gantry_router,
    reset_caches,
    scrape,
    start_engines,
    vllm_router,
    vllm_router_binary,
)

from gantry.bench import Job, Schedule, multi_turn_jobs, random_jobs, send_times, summarize
from gantry.bench import shared_prefix_jobs as shared
from gantry.bench.client import Target, run_job
from gantry.engines.h1 import H1Transport
from gantry.engines.transport import EngineTransport

GANTRY = (
    "least_loaded",
    "round_robin",
    "prefix",
    "kv_aware",
    "power_of_two",
    "sticky_least_loaded",
)
DEFAULT_POLICIES = (
    "least_loaded", "prefix", "kv_aware", "power_of_two", "sticky_least_loaded",
    "vllm-router:cache_aware", "vllm-router:kv_aware", "oracle",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    rate: float  # jobs (requests, or conversations for chat) per second
    think_s: float = 0.0

    def jobs(self, a: argparse.Namespace, seed: int, count: int) -> list[Job]:
        if self.name == "tenants":
            per = -(-count // a.tenants)
            jobs = shared(a.tenants, per, a.prefix_tokens, a.question_tokens, a.output_tokens,
                          seed=seed)  # fmt: skip
            return _each_tenant_first(jobs)[:count]
        if self.name == "chat":
            system = "You are the support assistant of a software company. " * (
                a.chat_system_tokens // 9
            )
            convs = multi_turn_jobs(count, a.turns, a.turn_tokens, a.output_tokens, seed=seed)
            return [dataclasses.replace(j, system=system) for j in convs]
        return random_jobs(count, a.control_tokens, a.output_tokens, range_ratio=0.2, seed=seed)


def _each_tenant_first(jobs: list[Job]) -> list[Job]:
    """One request of every tenant first (in random order), so that the warm-up, not the
    measured stretch, pays each system prompt's first prefill."""
    seen: set[str | None] = set()
    first, rest = [], []
    for j in jobs:
        (rest if j.system in seen else first).append(j)
        seen.add(j.system)
    return first + rest


def workloads(a: argparse.Namespace) -> dict[str, Workload]:
    return {
        "tenants": Workload("tenants", a.rate_tenants),
        "chat": Workload("chat", a.rate_chat, think_s=a.think_s),
        "control": Workload("control", a.rate_control),
    }


async def drive(
    transport: EngineTransport,
    w: Workload,
    jobs: list[Job],
    a: argparse.Namespace,
    seed: int,
    engines: list[Engine],
) -> tuple[list[Any], list[dict[str, float]]]:
    """Open loop: job i starts at its Poisson send time whatever the others are doing.
    The engines' counters are read when the warm-up ends."""
    target = Target(model=MODEL, chat=True, stream=True, ignore_eos=True)
    headers = {"content-type": "application/json"}
    loop = asyncio.get_running_loop()
    results: list[Any] = []
    t0 = time.perf_counter()
    start = loop.time()

    async def one(job: Job) -> None:
        results.extend(await run_job(transport, target, job, t0, headers, think_s=w.think_s))

    async def snapshot() -> list[dict[str, float]]:
        await asyncio.sleep(a.warmup)
        return await loop.run_in_executor(None, lambda: [scrape(e) for e in engines])

    at_warm = asyncio.create_task(snapshot())
    tasks = []
    times = send_times(Schedule(rate=w.rate, seed=seed), len(jobs), a.duration)
    for job, at in zip(jobs, times, strict=False):
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(job)))
    await asyncio.gather(*tasks)
    return results, await at_warm


def run_once(
    policy: str, w: Workload, a: argparse.Namespace, engines: list[Engine], seed: int,
    workdir: Path, vr: Path | None,
) -> dict[str, Any]:  # fmt: skip
    reset_caches(engines)
    router: Proc | None = None
    oracle: OracleTransport | None = None
    if policy == "oracle":
        oracle = OracleTransport(engines)
    elif policy.startswith("vllm-router:"):
        assert vr is not None
        router, url = vllm_router(vr, policy.split(":", 1)[1], engines, workdir)
    else:
        router, url = gantry_router(policy, engines, workdir)
    jobs = w.jobs(a, seed, int(w.rate * a.duration * 1.5) + 8)
    cpu0 = _cpu(engines, router)
    load0 = os.getloadavg()[0]

    async def go() -> tuple[list[Any], list[dict[str, float]]]:
        transport = oracle or H1Transport(url, max_idle=4096)
        try:
            return await drive(transport, w, jobs, a, seed, engines)
        finally:
            await transport.aclose()

    try:
        results, before = _run(go())
        after = [scrape(e) for e in engines]
        cpu1 = _cpu(engines, router)
    finally:
        if router is not None:
            router.stop()
    out = _figures([r for r in results if r.start >= a.warmup], a.warmup, before, after)
    out["warmup_requests"] = sum(1 for r in results if r.start < a.warmup)
    out["cpu_s"] = {k: round(cpu1[k] - cpu0[k], 1) for k in cpu1}
    out["loadavg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    if oracle is not None:
        s = oracle.stats
        out["oracle_by_cache"] = s.by_cache / max(1, s.decisions)
        out["oracle_match_ms_p50"] = statistics.median(s.match_ms) if s.match_ms else 0.0
    return out


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def _cpu(engines: list[Engine], router: Proc | None) -> dict[str, float]:
    out = {"engines": sum(cpu_seconds(e.proc.proc.pid) for e in engines)}
    out["router"] = cpu_seconds(router.proc.pid) if router is not None else 0.0
    t = os.times()
    out["client"] = t.user + t.system
    return out


def _figures(
    results: list[Any],
    warmup: float,
    before: list[dict[str, float]],
    after: list[dict[str, float]],
) -> dict[str, Any]:
    """Requests started after the warm-up; throughput over the time from the end of the
    warm-up to the last answer; engine counters over the same stretch."""
    end = max((r.start + r.e2el for r in results if r.ok), default=warmup)
    elapsed = max(end - warmup, 1e-9)
    s = summarize(results, elapsed, {})
    delta = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
    per_engine = [d["requests"] for d in delta]
    mean = statistics.fmean(per_engine) if per_engine else 0.0
    lags = [d["step_wall_s"] / d["step_model_s"] for d in delta if d["step_model_s"] > 0]
    queries = sum(d["queries"] for d in delta)
    return {
        "requests": s["completed"],
        "failed": s["failed"],
        "duration_s": round(elapsed, 1),
        "ttft_ms": {p: s[f"p{p}_ttft_ms"] for p in (50, 90, 99)},
        "itl_ms": {p: s[f"p{p}_itl_ms"] for p in (50, 90, 99)},
        "req_per_s": s["request_throughput"],
        "out_tok_per_s": s["output_throughput"],
        "hit_rate": sum(d["hits"] for d in delta) / queries if queries else 0.0,
        "per_engine": per_engine,
        "balance": max(per_engine) / mean if mean else 0.0,
        "clock_lag": max(lags) if lags else 1.0,
        "steps_per_s": sum(d["steps"] for d in delta) / max(elapsed, 1e-9),
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every number the median over repeats (nested dicts too); lists from the first."""
    first = runs[0]
    out: dict[str, Any] = {}
    for k, v in first.items():
        if isinstance(v, dict):
            out[k] = median_of([r[k] for r in runs])
        elif isinstance(v, int | float):
            out[k] = statistics.median(r[k] for r in runs)
        else:
            out[k] = v
    return out


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    failed = [r for r in runs if "error" in r]
    return failed[-1] if failed else median_of(runs)


def table(name: str, rows: dict[str, dict[str, Any]]) -> str:
    head = (
        "| policy | TTFT p50 | p90 | p99 (ms) | ITL p50 | p90 (ms) | req/s | out tok/s "
        "| prefix hit | max/mean reqs | failed | clock lag |"
    )
    lines = [f"**{name}**", "", head, "|" + "---|" * 12]
    for policy, r in rows.items():
        if "error" in r:
            lines.append(f"| {policy} | {r['error']} |" + " |" * 10)
            continue
        t, i = r["ttft_ms"], r["itl_ms"]
        lines.append(
            f"| {policy} | {t[50]:.0f} | {t[90]:.0f} | {t[99]:.0f} | {i[50]:.1f} | {i[90]:.1f} "
            f"| {r['req_per_s']:.2f} | {r['out_tok_per_s']:.0f} | {r['hit_rate']:.0%} "
            f"| {r['balance']:.2f} | {r['failed']:.0f} | {r['clock_lag']:.3f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--quick", action="store_true", help="a short smoke run at tiny scale")
    add("--repeats", type=int, default=1)
    add("--workloads", default="tenants,chat,control")
    add("--policies", default=",".join(DEFAULT_POLICIES))
    add("--duration", type=float, default=60.0, help="seconds of arrivals per run")
    add("--warmup", type=float, default=20.0, help="first seconds left out of the figures")
    add("--engines", type=int, default=4)
    add("--gpu-blocks", type=int, default=0, help="KV blocks per engine (0: as sized on H100)")
    add("--speedup", type=float, default=1.0, help="the simulators' clock (1 = real time)")
    add("--tenants", type=int, default=96)
    add("--prefix-tokens", type=int, default=12000, help="a tenant's system prompt")
    add("--question-tokens", type=int, default=100)
    add("--control-tokens", type=int, default=6000, help="a control prompt (±20%%)")
    add("--output-tokens", type=int, default=64)
    add("--chat-system-tokens", type=int, default=1000)
    add("--turns", type=int, default=4)
    add("--turn-tokens", type=int, default=2500)
    add("--think-s", type=float, default=5.0, help="pause between a reply and the next turn")
    add("--rate-tenants", type=float, default=8.0)
    add("--rate-chat", type=float, default=3.5, help="conversations started per second")
    add("--rate-control", type=float, default=12.0)
    add("--vllm-router-venv", type=Path, default=Path("/tmp/vr-venv"))
    add("--no-install", action="store_true", help="skip vllm-router if not installed")
    add("--output", type=Path, default=Path(tempfile.gettempdir()) / "routing-bench.json")
    add("--markdown", type=Path, default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.duration, a.tenants, a.gpu_blocks = min(a.duration, 4.0), 6, 512
        a.warmup = min(a.warmup, a.duration / 4)
        a.prefix_tokens, a.chat_system_tokens, a.turns, a.turn_tokens = 200, 60, 3, 40
        a.control_tokens, a.question_tokens = 200, 20
        a.output_tokens, a.think_s = 8, 0.2
        a.rate_tenants, a.rate_chat, a.rate_control = 4.0, 1.0, 3.0
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on `kill`
    policies = [x for x in a.policies.split(",") if x]
    known = {*GANTRY, "oracle", "vllm-router:cache_aware", "vllm-router:kv_aware"}
    bad = [x for x in policies if x not in known]
    if bad:
        sys.exit(f"unknown policies {bad}; choose from {sorted(known)}")
    chosen = [workloads(a)[n] for n in a.workloads.split(",") if n]
    vr = None
    if any(x.startswith("vllm-router:") for x in policies):
        vr = vllm_router_binary(a.vllm_router_venv, install=not a.no_install)
        if vr is None:
            print(f"vllm-router {a.vllm_router_venv} not installed: skipped", file=sys.stderr)
            policies = [x for x in policies if not x.startswith("vllm-router:")]
    sim_args = ["--model", "llama-3.1-8b", "--gpu", "H100-80GB", "--profile", "realistic"]
    max_len = min(32768, (a.gpu_blocks - 1) * 16) if a.gpu_blocks else 32768
    sim_args += ["--speedup", str(a.speedup), "--max-model-len", str(max_len)]
    if a.gpu_blocks:
        sim_args += ["--num-gpu-blocks-override", str(a.gpu_blocks)]
    conditions = {
        "command": " ".join(["python", "benchmarks/routing.py", *(argv or sys.argv[1:])]),
        "cpus": os.cpu_count(),
        "engines": a.engines,
        "sim_args": sim_args,
        "settings": {k: str(v) for k, v in vars(a).items()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": os.getloadavg(),
    }
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {w.name: {} for w in chosen}
    with tempfile.TemporaryDirectory(prefix="routing-bench-") as tmp:
        workdir = Path(tmp)
        engines = start_engines(a.engines, sim_args, workdir)
        try:
            for rep in range(a.repeats):
                for w in chosen:
                    for policy in policies:
                        r = _guarded(policy, w, a, engines, rep, workdir, vr)
                        runs[w.name].setdefault(policy, []).append(r)
                        _progress(rep, w.name, policy, r)
                        partial = {"conditions": conditions, "runs": runs, "partial": True}
                        a.output.write_text(json.dumps(partial, indent=1, default=str))
        finally:
            for e in engines:
                e.proc.stop()
    conditions["loadavg_end"] = os.getloadavg()
    medians = {w: {p: _median(rs) for p, rs in ps.items()} for w, ps in runs.items()}
    text = "\n\n".join(table(w, rows) for w, rows in medians.items())
    print(text)
    result = {"conditions": conditions, "median": medians, "runs": runs}
    a.output.write_text(json.dumps(result, indent=1, default=str))
    if a.markdown:
        a.markdown.write_text(text + "\n")
    print(f"\nresults: {a.output}", file=sys.stderr)
    return result


def _guarded(policy: str, w: Workload, a: argparse.Namespace, engines: list[Engine],
             rep: int, workdir: Path, vr: Path | None) -> dict[str, Any]:  # fmt: skip
    try:
        return run_once(policy, w, a, engines, rep, workdir, vr)
    except (OSError, RuntimeError, TimeoutError) as exc:  # one target failing ends its run
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}


def _progress(rep: int, workload: str, policy: str, r: dict[str, Any]) -> None:
    if "error" in r:
        line = r["error"]
    else:
        line = (
            f"TTFT p90 {r['ttft_ms'][90]:.0f} ms, {r['req_per_s']:.2f} req/s, hit "
            f"{r['hit_rate']:.0%}, balance {r['balance']:.2f}, lag {r['clock_lag']:.3f}, "
            f"load {r['loadavg_1m'][1]}, cpu {r['cpu_s']}"
        )
    print(f"[{rep}] {workload:8} {policy:24} {line}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
