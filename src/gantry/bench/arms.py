"""The arms of a traffic split (or a model and its shadow), read from a gateway's metrics.

``gantry bench compare --gateway URL --split chat`` scrapes ``/metrics`` and turns each
arm's ``gantry_split_*`` series into the same figures a ``gantry bench`` result has
(requests, failures, TTFT and end-to-end latency percentiles), so two arms are compared
with the same table as two runs. Percentiles come from the histograms as Prometheus's
``histogram_quantile`` computes them (linear within a bucket): they are as fine as the
buckets, which is enough to tell a regression from noise, not to quote to the
millisecond. Pure: parsing and arithmetic only.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """``histogram_quantile``: ``buckets`` are (upper bound, cumulative count)."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def _histograms(text: str, name: str, where: dict[str, str], by: str) -> dict[str, Any]:
    """Per value of label ``by``: its buckets, sum and count, for series matching ``where``."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"buckets": [], "sum": 0.0, "count": 0.0})
    for fam in text_string_to_metric_families(text):
        if fam.name != name:
            continue
        for s in fam.samples:
            if any(s.labels.get(k) != v for k, v in where.items()):
                continue
            h = out[s.labels.get(by, "")]
            if s.name.endswith("_bucket"):
                h["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_sum"):
                h["sum"] = s.value
            elif s.name.endswith("_count"):
                h["count"] = s.value
    return out


def _counts(text: str, name: str, where: dict[str, str], by: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for fam in text_string_to_metric_families(text):
        if fam.name != name:
            continue
        for s in fam.samples:
            if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in where.items()):
                out[s.labels.get(by, "")][s.labels.get("status", "")] = s.value
    return out


def _result(
    ttft: dict[str, Any] | None, dur: dict[str, Any] | None, statuses: dict[str, float]
) -> dict[str, Any]:
    done = sum(statuses.values())
    failed = sum(v for st, v in statuses.items() if not st.startswith("2"))
    res: dict[str, Any] = {"completed": done - failed, "failed": failed}
    for key, h in (("ttft", ttft), ("e2el", dur)):
        if h is None or not h["count"]:
            continue
        res[f"mean_{key}_ms"] = h["sum"] / h["count"] * 1000
        for label, q in (("median", 0.5), ("p99", 0.99)):
            v = quantile(q, h["buckets"])
            if v is not None:
                res[f"{label}_{key}_ms"] = v * 1000
    return res


def split_arms(text: str, split: str) -> dict[str, dict[str, Any]]:
    """Each arm of ``split``: a result dict as ``gantry bench`` writes them."""
    where = {"split": split}
    ttft = _histograms(text, "gantry_split_time_to_first_token_seconds", where, "arm")
    dur = _histograms(text, "gantry_split_request_duration_seconds", where, "arm")
    status = _counts(text, "gantry_split_requests", where, "arm")
    return {arm: _result(ttft.get(arm), dur.get(arm), status[arm]) for arm in sorted(status)}


def shadow_arms(text: str, model: str) -> dict[str, dict[str, Any]]:
    """The live model and each of its shadow targets."""
    live_ttft = _histograms(text, "gantry_time_to_first_token_seconds", {"model": model}, "model")
    live_dur = _histograms(text, "gantry_request_duration_seconds", {"model": model}, "model")
    live = _counts(text, "gantry_requests", {"model": model}, "model")
    out = {model: _result(live_ttft.get(model), live_dur.get(model), live.get(model, {}))}
    where = {"model": model}
    ttft = _histograms(text, "gantry_shadow_time_to_first_token_seconds", where, "target")
    dur = _histograms(text, "gantry_shadow_request_duration_seconds", where, "target")
    for target, statuses in sorted(
        _counts(text, "gantry_shadow_requests", where, "target").items()
    ):
        out[f"shadow:{target}"] = _result(ttft.get(target), dur.get(target), statuses)
    return out
