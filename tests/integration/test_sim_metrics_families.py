"""The simulator's always-on vLLM 0.33 metric families, scraped from a real engine.

Names, types, labels and buckets follow ``vllm/v1/metrics/loggers.py``
(``PrometheusStatLogger``); what moves them follows ``v1/metrics/stats.py`` and
``v1/engine/parallel_sampling.py``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import metric_value, sim, wait_until

FAMILIES = {
    "vllm:prompt_tokens_by_source": "counter",
    "vllm:prompt_tokens_cached": "counter",
    "vllm:prompt_tokens_recomputed": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:num_requests_waiting_by_reason": "gauge",
    "vllm:engine_sleep_state": "gauge",
    "vllm:cache_config_info": "gauge",
    "vllm:request_prefill_kv_computed_tokens": "histogram",
    "vllm:request_params_n": "histogram",
    "vllm:request_params_max_tokens": "histogram",
    "vllm:request_max_num_generation_tokens": "histogram",
    "vllm:request_num_preemptions": "histogram",
}


def _families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _labels(text: str, name: str) -> list[dict[str, str]]:
    fam = _families(text)[name]
    return [s.labels for s in fam.samples]  # type: ignore[attr-defined]


def test_always_on_families_move_like_vllm(tmp_path: Path):
    """loggers.py: the families exist with vLLM's types and labels; stats.py's
    PromptTokenStats splits each whole prompt into local_compute + local_cache_hit +
    external_kv_transfer; ParentRequest observes n and the largest choice once."""
    prompt = "a long shared system prompt " * 30
    with sim(tmp_path, "--profile", "instant", "--max-model-len", "4096") as p:
        text = httpx.get(p.url + "/metrics").text
        fams = _families(text)
        for name, kind in FAMILIES.items():
            assert fams[name].type == kind, name  # type: ignore[attr-defined]
        assert metric_value(text, "vllm:engine_sleep_state", sleep_state="awake") == 1
        for state in ("weights_offloaded", "discard_all"):
            assert metric_value(text, "vllm:engine_sleep_state", sleep_state=state) == 0
        (info,) = _labels(text, "vllm:cache_config_info")
        assert info["engine"] == "0" and info["block_size"] == "16"
        assert info["enable_prefix_caching"] == "True" and int(info["num_gpu_blocks"]) > 0
        assert {"cache_dtype", "gpu_memory_utilization", "prefix_caching_hash_algo"} <= set(info)
        assert {lab["reason"] for lab in _labels(text, "vllm:num_requests_waiting_by_reason")} == {
            "capacity",
            "deferred",
        }
        le = {
            s.labels["le"]
            for s in fams["vllm:request_params_n"].samples  # type: ignore[attr-defined]
            if s.name.endswith("_bucket")
        }
        assert le == {"1.0", "2.0", "5.0", "10.0", "20.0", "+Inf"}

        usages = []
        for tail in ("one", "two"):  # the second prompt hits the first one's blocks
            r = httpx.post(
                p.url + "/v1/completions",
                json={"prompt": prompt + tail, "max_tokens": 3, "ignore_eos": True},
            )
            usages.append(r.json()["usage"])
        r = httpx.post(
            p.url + "/v1/completions",
            json={"prompt": "n of three", "max_tokens": 4, "n": 3, "ignore_eos": True},
        )
        usages.append(r.json()["usage"])
        text = httpx.get(p.url + "/metrics").text

    cached = usages[1]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0
    total = metric_value(text, "vllm:prompt_tokens_total")
    by = {
        src: metric_value(text, "vllm:prompt_tokens_by_source_total", source=src)
        for src in ("local_compute", "local_cache_hit", "external_kv_transfer")
    }
    assert by["local_cache_hit"] >= cached and by["external_kv_transfer"] == 0
    assert sum(by.values()) == total
    assert metric_value(text, "vllm:prompt_tokens_cached_total") == by["local_cache_hit"]
    # Per finished (child) request: prompt minus cached tokens.
    assert metric_value(text, "vllm:request_prefill_kv_computed_tokens_count") == 5
    assert metric_value(text, "vllm:request_prefill_kv_computed_tokens_sum") == by["local_compute"]
    assert metric_value(text, "vllm:request_num_preemptions_count") == 5
    assert metric_value(text, "vllm:request_num_preemptions_sum") == 0
    # Once per request: n is 1, 1 and 3; the largest choice is 3, 3 and 4 tokens.
    assert metric_value(text, "vllm:request_params_n_count") == 3
    assert metric_value(text, "vllm:request_params_n_sum") == 5
    assert metric_value(text, "vllm:request_params_n_bucket", le="1.0") == 2
    assert metric_value(text, "vllm:request_max_num_generation_tokens_count") == 3
    assert metric_value(text, "vllm:request_max_num_generation_tokens_sum") == 10
    assert metric_value(text, "vllm:request_params_max_tokens_count") == 5


def test_waiting_by_reason_sums_to_waiting(tmp_path: Path):
    """loggers.py: num_requests_waiting_by_reason{capacity,deferred} sum to
    num_requests_waiting; a request queued behind a full batch waits for capacity."""
    with sim(tmp_path, "--speedup", "0.05", "--max-num-seqs", "1") as p:
        body = {"prompt": "x", "max_tokens": 500, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", p.url + "/v1/completions", json=body) as first:
            lines = first.iter_lines()
            assert next(lines).startswith("data: ")  # the first request is running
            with httpx.stream("POST", p.url + "/v1/completions", json=body) as second:
                assert second.status_code == 200

                def queued() -> str | None:
                    text = httpx.get(p.url + "/metrics").text
                    return text if metric_value(text, "vllm:num_requests_waiting") == 1 else None

                text = wait_until(queued, what="the second request queued")
                capacity = metric_value(
                    text, "vllm:num_requests_waiting_by_reason", reason="capacity"
                )
                deferred = metric_value(
                    text, "vllm:num_requests_waiting_by_reason", reason="deferred"
                )
                assert (capacity, deferred) == (1, 0)
