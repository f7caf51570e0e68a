"""Disaggregated prefill/decode on simulated engines: vLLM's NixlConnector contract.

Mirrors vLLM 0.33's ``kv_transfer_params`` flow (toy proxy and vllm-router P/D): the
prefill request carries ``{"do_remote_decode": true}`` and ``max_tokens: 1``; its answer
carries ``do_remote_prefill``, ``remote_engine_id``, ``remote_block_ids``,
``remote_host`` and ``remote_port``; the decode request carries those back.
"""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import metric_value, sim

PROMPT = "The gateway streams tokens from the engine to the client. " * 40
PREFILL = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


def body(max_tokens: int, params: dict | None) -> dict:
    return {"model": "m", "prompt": PROMPT, "max_tokens": max_tokens, "kv_transfer_params": params}


@pytest.fixture(scope="module")
def pd_pair(module_tmp):
    common = ("--served-model-name", "m", "--speedup", "20")
    with (
        sim(module_tmp, *common, "--pd-role", "prefill") as p,
        sim(
            module_tmp,
            *common,
            "--kv-transfer-config",
            '{"kv_connector":"NixlConnector","kv_role":"kv_consumer"}',
            "--kv-link",
            "tcp",
            "--kv-transfer-timeout",
            "1",
        ) as d,
    ):
        yield p, d


def test_prefill_answers_with_the_params_a_decode_engine_needs(pd_pair):
    p, _ = pd_pair
    r = httpx.post(p.url + "/v1/completions", json=body(1, PREFILL), timeout=30)
    assert r.status_code == 200, r.text
    kv = r.json()["kv_transfer_params"]
    assert kv["do_remote_prefill"] is True and kv["do_remote_decode"] is False
    assert kv["remote_host"] == "127.0.0.1" and kv["remote_port"] == p.port
    assert kv["remote_engine_id"] and kv["remote_request_id"]
    n_tokens = r.json()["usage"]["prompt_tokens"]
    assert len(kv["remote_block_ids"]) == (n_tokens - 1) // 16  # full prompt blocks


def by_source(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    return {
        s: metric_value(text, "vllm:prompt_tokens_by_source_total", source=s)
        for s in ("local_compute", "local_cache_hit", "external_kv_transfer")
    }


def test_decode_skips_the_transferred_prompt_and_pulls_each_transfer_once(pd_pair):
    """vLLM v1 PromptTokenStats: a decode engine counts the prompt tokens its connector
    loaded (num_external_computed_tokens) as source="external_kv_transfer", not as a
    local cache hit; local_compute + local_cache_hit + external = the whole prompt."""
    p, d = pd_pair
    kv = httpx.post(p.url + "/v1/completions", json=body(1, PREFILL), timeout=30).json()
    kv = kv["kv_transfer_params"]
    before = by_source(d.url)
    r = httpx.post(d.url + "/v1/completions", json=body(8, kv), timeout=30)
    assert r.status_code == 200, r.text
    u = r.json()["usage"]
    assert u["completion_tokens"] == 8
    # the transferred blocks are the decode engine's computed prefix
    transferred = len(kv["remote_block_ids"]) * 16
    assert u["prompt_tokens_details"]["cached_tokens"] == transferred
    after = by_source(d.url)
    delta = {k: after[k] - before[k] for k in after}
    assert delta == {
        "local_compute": u["prompt_tokens"] - transferred,
        "local_cache_hit": 0,
        "external_kv_transfer": transferred,
    }
    # the prefill engine released the blocks once read: a second pull finds nothing,
    # and the decode engine gives up after its time-out, as vLLM's does
    again = httpx.post(d.url + "/v1/completions", json=body(8, kv), timeout=30)
    assert again.status_code == 500
    assert "KV transfer" in again.json()["error"]["message"]


def test_params_that_point_nowhere_time_out(pd_pair):
    _, d = pd_pair
    bogus = {
        "do_remote_prefill": True,
        "remote_engine_id": "x",
        "remote_request_id": "y",
        "remote_block_ids": [1, 2, 3],
        "remote_host": "127.0.0.1",
        "remote_port": 1,
    }
    r = httpx.post(d.url + "/v1/completions", json=body(4, bogus), timeout=30)
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "InternalServerError"


def test_a_request_without_params_is_served_whole(pd_pair):
    _, d = pd_pair
    r = httpx.post(d.url + "/v1/completions", json=body(4, None), timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
