"""Per-request results and the summary, with `vllm bench serve`'s definitions.

* TTFT: first chunk carrying choices (chat: not the role-only chunk);
* ITL: every later gap between chunks;
* E2EL: arrival of the last token chunk;
* TPOT: (E2EL - TTFT) / (output tokens - 1), for outputs longer than one token;
* token counts from the server's usage; failed = non-2xx or no token chunk.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class RequestResult:
    start: float  # seconds since the run began
    ok: bool = False
    status: int = 0
    error: str = ""
    ttft: float = 0.0  # seconds
    e2el: float = 0.0
    itls: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    chunk_times: list[float] = field(default_factory=list)  # seconds since run began

    @property
    def tpot(self) -> float | None:
        if self.output_tokens > 1:
            return (self.e2el - self.ttft) / (self.output_tokens - 1)
        return None


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return 0.0
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def describe(name: str, values_s: list[float], out: dict[str, Any]) -> None:
    ms = [v * 1000 for v in values_s]
    out[f"mean_{name}_ms"] = statistics.fmean(ms) if ms else 0.0
    out[f"median_{name}_ms"] = statistics.median(ms) if ms else 0.0
    out[f"std_{name}_ms"] = statistics.pstdev(ms) if len(ms) > 1 else 0.0
    for p in PERCENTILES:
        out[f"p{p}_{name}_ms"] = percentile(ms, p)


def is_good(r: RequestResult, slo: dict[str, float]) -> bool:
    """A request is good when it meets every SLO (``<=``, milliseconds)."""
    if not r.ok:
        return False
    values = {
        "ttft": r.ttft,
        "e2el": r.e2el,
        "tpot": r.tpot or 0.0,
        "itl": max(r.itls) if r.itls else 0.0,
    }
    return all(values[k] * 1000 <= v for k, v in slo.items())


def summarize(
    results: list[RequestResult], duration: float, slo: dict[str, float]
) -> dict[str, Any]:
    done = [r for r in results if r.ok]
    out: dict[str, Any] = {
        "duration": duration,
        "completed": len(done),
        "failed": len(results) - len(done),
        "total_input_tokens": sum(r.prompt_tokens for r in done),
        "total_output_tokens": sum(r.output_tokens for r in done),
    }
    d = max(duration, 1e-9)
    out["request_throughput"] = len(done) / d
    out["request_goodput"] = (sum(1 for r in done if is_good(r, slo)) / d) if slo else None
    out["output_throughput"] = out["total_output_tokens"] / d
    out["total_token_throughput"] = (out["total_input_tokens"] + out["total_output_tokens"]) / d
    out.update(_peaks(done, results))
    describe("ttft", [r.ttft for r in done], out)
    describe("tpot", [t for r in done if (t := r.tpot) is not None], out)
    describe("itl", [x for r in done for x in r.itls], out)
    describe("e2el", [r.e2el for r in done], out)
    out["errors_by_status"] = dict(Counter(str(r.status or r.error) for r in results if not r.ok))
    if slo:
        out["slo_ms"] = slo
        out["slo_attainment"] = (
            sum(1 for r in done if is_good(r, slo)) / len(results) if results else 0.0
        )
    return out


def _peaks(done: list[RequestResult], results: list[RequestResult]) -> dict[str, float]:
    """Peak output tokens/s and peak concurrency over 1-second buckets."""
    if not results:
        return {"max_output_tokens_per_s": 0.0, "max_concurrent_requests": 0}
    tokens: Counter[int] = Counter()
    for r in done:
        for t in r.chunk_times:
            tokens[int(t)] += 1
    conc: Counter[int] = Counter()
    for r in results:
        end = r.start + (r.e2el or 0.0)
        for sec in range(int(r.start), int(end) + 1):
            conc[sec] += 1
    return {
        "max_output_tokens_per_s": float(max(tokens.values(), default=0)),
        "max_concurrent_requests": max(conc.values(), default=0),
    }
