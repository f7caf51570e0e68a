"""Front-end admission and load reports, as vLLM's API server makes them (pure).

* ``--max-num-queued-reqs`` / ``--max-num-queued-tokens``: ``AsyncLLM.check_admission``
  (vllm/v1/engine/async_llm.py) counts unfinished requests (each of ``n`` choices is
  one) and the prompt tokens of requests still in prefill, and refuses with HTTP 503.
* ORCA load reports: ``serve/utils/orca_metrics.py`` answers the request header
  ``endpoint-load-metrics-format: TEXT|JSON`` with an ``endpoint-load-metrics`` header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueueLimits:
    max_reqs: int | None = None
    max_tokens: int | None = None


def refusal(
    limits: QueueLimits, *, unfinished: int, prefill_tokens: int, new_reqs: int
) -> str | None:
    """Which limit refuses ``new_reqs`` more requests, or None to admit them."""
    if limits.max_reqs is not None and unfinished + new_reqs > limits.max_reqs:
        return "max_num_queued_reqs"
    if limits.max_tokens is not None and prefill_tokens >= limits.max_tokens:
        return "max_num_queued_tokens"
    return None


def orca_header(fmt: str | None, kv_usage: float, waiting: int) -> bytes | None:
    """The ``endpoint-load-metrics`` value for a requested format, else None."""
    if fmt is None:
        return None
    metrics = {"kv_cache_usage_perc": kv_usage, "num_requests_waiting": float(waiting)}
    kind = fmt.strip().upper()
    if kind == "TEXT":
        body = ", ".join(f"named_metrics.{k}={v}" for k, v in metrics.items())
        return f"TEXT {body}".encode()
    if kind == "JSON":
        return ("JSON " + json.dumps({"named_metrics": metrics})).encode()
    return None
