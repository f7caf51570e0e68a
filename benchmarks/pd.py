"""When does disaggregated prefill/decode (P/D) beat aggregated serving?

    python benchmarks/pd.py [--gpu H100] [--model llama-3.1-8b] [--engines 4]
                            [--link rdma] [--duration 60] [--quick]

Runs, in virtual time (``gantry.sim.virtual``: the simulator's scheduler, KV cache and
latency model, no sockets), a Poisson workload of distinct prompts on N aggregated
engines and on N/2 prefill + N/2 decode engines, for each ISL/OSL and request rate.
P/D: each request is prefilled (``max_tokens: 1``) on a prefill engine, its KV crosses
the link (KV bytes / bandwidth, ``gantry.sim.pd``), and a decode engine, which holds
the transferred blocks as computed, generates the output. Requests are spread round
robin in both arms. Prints TTFT and TPOT p50/p90 (ms) and output throughput (tok/s).
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

from gantry.sim.pd import LINKS, parse_link, transfer_seconds
from gantry.sim.sequence import SimRequest
from gantry.sim.settings import SimSettings
from gantry.sim.virtual import Arrival, Limits, Timing, VirtualEngine

VOCAB = 30_000


class DecodeEngine(VirtualEngine):
    """A decode engine: each request's prompt KV arrives computed (as transferred)."""

    def _request(self, a: Arrival, index: int) -> SimRequest:
        req = super()._request(a, index)
        kv = self.core.kv
        n = (len(a.prompt) - 1) // kv.block_size
        req.update_hashes(kv.block_size)
        owned: list[int] = []
        if n > 0 and kv.allocate(owned, [], n * kv.block_size):
            kv.cache_full_blocks(owned, req.hashes[:n], 0, a.prompt)
            kv.free(owned)  # cached, free to reuse: admission finds them as a prefix hit
        return req


@dataclass(frozen=True, slots=True)
class Row:
    arm: str
    isl: int
    osl: int
    rate: float
    ttft50: float
    ttft90: float
    tpot50: float
    tpot90: float
    throughput: float
    completed: int


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(len(s) - 1, int(k) + 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def workload(isl: int, osl: int, rate: float, duration: float, seed: int) -> list[Arrival]:
    rng = random.Random(seed)
    t, out = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t > duration:
            return out
        out.append(Arrival(t, [rng.randrange(VOCAB) for _ in range(isl)], osl))


def _split(arrivals: list[Arrival], n: int) -> list[list[Arrival]]:
    return [arrivals[i::n] for i in range(n)]


def _row(arm: str, isl: int, osl: int, rate: float, ttft: list[float], ts: list[Timing]) -> Row:
    tpot = [v for t in ts if (v := t.tpot) is not None]
    end = max((t.arrival + t.e2el for t in ts), default=0.0)
    start = min((t.arrival for t in ts), default=0.0)
    out = sum(t.output_tokens for t in ts)
    thr = out / (end - start) if end > start else 0.0
    return Row(
        arm,
        isl,
        osl,
        rate,
        _pct(ttft, 50) * 1e3,
        _pct(ttft, 90) * 1e3,
        _pct(tpot, 50) * 1e3,
        _pct(tpot, 90) * 1e3,
        thr,
        len(ts),
    )


def aggregated(
    s: SimSettings, arrivals: list[Arrival], n: int, isl: int, osl: int, rate: float
) -> Row:
    r = s.resolve()
    timings: list[Timing] = []
    for part in _split(arrivals, n):
        timings += VirtualEngine.from_resolved(r, limits=Limits()).run(part).timings
    return _row(f"{n} aggregated", isl, osl, rate, [t.ttft for t in timings], timings)


def disaggregated(
    s: SimSettings,
    arrivals: list[Arrival],
    p: int,
    d: int,
    link: str,
    isl: int,
    osl: int,
    rate: float,
) -> Row:
    r = s.resolve()
    per_token = r.model.kv_bytes_per_token(r.kv_dtype_bytes)
    _, lk = parse_link(link)
    origin = {a.time: a for a in arrivals}
    handoff: list[Arrival] = []
    for part in _split(arrivals, p):
        pre = [Arrival(a.time, a.prompt, 1) for a in part]
        for t in VirtualEngine.from_resolved(r).run(pre).timings:
            a = origin[t.arrival]
            move = transfer_seconds(isl, per_token, s.tensor_parallel_size, lk)
            handoff.append(Arrival(t.arrival + t.e2el + move, a.prompt, a.max_tokens))
    handoff.sort(key=lambda a: a.time)
    started = {id(a.prompt): a.time for a in arrivals}  # decode keeps the prompt object
    ttft: list[float] = []
    timings: list[Timing] = []
    for part in _split(handoff, d):
        res = DecodeEngine.from_resolved(r).run(part)
        by_arrival = {h.time: h for h in part}
        for t in res.timings:
            first = started[id(by_arrival[t.arrival].prompt)]
            ttft.append(t.arrival + t.ttft - first)
            timings.append(
                Timing(
                    first,
                    t.arrival + t.ttft - first,
                    t.arrival + t.e2el - first,
                    t.prompt_tokens,
                    t.output_tokens,
                    t.cached_tokens,
                )
            )
    return _row(f"{p}P+{d}D ({link})", isl, osl, rate, ttft, timings)


def table(rows: list[Row]) -> str:
    head = (
        "| ISL/OSL | rate (req/s) | serving | TTFT p50 | TTFT p90 | TPOT p50 | TPOT p90 "
        "| output tok/s |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for x in rows:
        lines.append(
            f"| {x.isl}/{x.osl} | {x.rate:g} | {x.arm} | {x.ttft50:.0f} ms | {x.ttft90:.0f} ms "
            f"| {x.tpot50:.1f} ms | {x.tpot90:.1f} ms | {x.throughput:.0f} |"
        )
    return "\n".join(lines)


def run(
    gpu: str,
    model: str,
    engines: int,
    link: str,
    duration: float,
    grid: list[tuple[int, int]],
    rates: list[float],
) -> list[Row]:
    s = SimSettings(model=model, gpu=gpu)
    rows = []
    for isl, osl in grid:
        for rate in rates:
            arrivals = workload(isl, osl, rate, duration, seed=isl * 31 + osl)
            rows.append(aggregated(s, arrivals, engines, isl, osl, rate))
            half = engines // 2
            rows.append(disaggregated(s, arrivals, half, engines - half, link, isl, osl, rate))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--engines", type=int, default=4)
    ap.add_argument("--link", default="rdma", help=f"{', '.join(LINKS)} or GB/s")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    ap.add_argument("--quick", action="store_true", help="a small grid, for tests")
    a = ap.parse_args(argv)
    if a.quick:
        grid, rates, duration = [(2048, 128)], [4.0], min(a.duration, 5.0)
    else:
        grid = [(512, 512), (2048, 256), (8192, 256), (256, 1024)]
        rates, duration = [4.0, 16.0, 32.0], a.duration
    rows = run(a.gpu, a.model, a.engines, a.link, duration, grid, rates)
    print(
        f"{a.model} on {a.gpu}: {a.engines} engines, KV link {a.link}, "
        f"{duration:g}s of Poisson arrivals"
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
