"""Read the load signals a router needs from a vLLM ``/metrics`` page.

Tolerates the names older vLLM versions used (``gpu_cache_usage_perc``,
``gpu_prefix_cache_*``) and engines whose page lacks any of them.
"""

from __future__ import annotations

from dataclasses import dataclass

_WANTED = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_usage",
    "vllm:gpu_cache_usage_perc": "kv_usage_old",
    "vllm:prefix_cache_queries_total": "prefix_queries",
    "vllm:prefix_cache_hits_total": "prefix_hits",
    "vllm:gpu_prefix_cache_queries_total": "prefix_queries_old",
    "vllm:gpu_prefix_cache_hits_total": "prefix_hits_old",
}


@dataclass(frozen=True, slots=True)
class EngineLoad:
    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None
    prefix_queries: float | None = None
    prefix_hits: float | None = None


def parse_metrics(text: str) -> EngineLoad:
    """Sum each wanted sample over label sets (several DP engines share one page)."""
    acc: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#" or not line.startswith("vllm:"):
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end < 0:
            continue
        key = _WANTED.get(line[:name_end])
        if key is None:
            continue
        try:
            value = float(
                line.rsplit(" ", 1)[-1]
                if "}" not in line
                else line[line.rindex("}") + 1 :].split()[0]
            )
        except (ValueError, IndexError):
            continue
        if key.startswith("kv_usage"):
            acc[key] = max(acc.get(key, 0.0), value)
        else:
            acc[key] = acc.get(key, 0.0) + value
    return EngineLoad(
        running=acc.get("running"),
        waiting=acc.get("waiting"),
        kv_usage=acc.get("kv_usage", acc.get("kv_usage_old")),
        prefix_queries=acc.get("prefix_queries", acc.get("prefix_queries_old")),
        prefix_hits=acc.get("prefix_hits", acc.get("prefix_hits_old")),
    )
