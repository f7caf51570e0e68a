"""The gateway's P/D request rewrites (vLLM's toy proxy / vllm-router contract)."""

from __future__ import annotations

import orjson

from gantry.gateway import pd


def test_prefill_request_is_whole_one_token_and_asks_to_keep_the_kv():
    body = orjson.dumps(
        {
            "model": "m",
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_completion_tokens": 300,
            "max_tokens": 300,
            "min_tokens": 5,
            "messages": [],
        }
    )
    out = orjson.loads(pd.prefill_body(body))
    assert out["stream"] is False and "stream_options" not in out and "min_tokens" not in out
    assert out["max_tokens"] == 1 and out["max_completion_tokens"] == 1
    assert out["kv_transfer_params"] == {
        "do_remote_decode": True,
        "do_remote_prefill": False,
        "remote_engine_id": None,
        "remote_block_ids": None,
        "remote_host": None,
        "remote_port": None,
    }


def test_decode_request_carries_the_prefill_params_or_goes_as_is():
    body = orjson.dumps({"model": "m", "stream": True})
    params = {"do_remote_prefill": True, "remote_block_ids": [1]}
    assert orjson.loads(pd.decode_body(body, params))["kv_transfer_params"] == params
    assert pd.decode_body(body, None) == body
    assert pd.params_of(orjson.dumps({"kv_transfer_params": params})) == params
    assert pd.params_of(b'{"kv_transfer_params": null}') is None
    assert pd.params_of(b"not json") is None


def test_roles():
    assert pd.disaggregated(["prefill", None]) and not pd.disaggregated(["both", None])
    assert pd.serves("both", pd.PREFILL) and pd.serves("both", pd.DECODE)
    assert not pd.serves("decode", pd.PREFILL) and not pd.serves(None, pd.DECODE)
