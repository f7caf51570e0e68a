"""Disaggregated prefill/decode (P/D): the request rewrites, as plain functions.

A model is served disaggregated when any of its engines has ``role: prefill`` or
``role: decode`` in ``engines``. Each request then makes two engine calls (vLLM's
``kv_transfer_params`` contract, as its toy proxy and vllm-router do it):

1. a prefill engine (``prefill`` or ``both``; the model's routing policy, so
   ``kv_aware``/``prefix`` keep prompts where their KV is) gets the request with
   ``stream: false``, ``max_tokens: 1`` and ``kv_transfer_params:
   {"do_remote_decode": true, ...}``; its answer carries the params of the KV it holds;
2. a decode engine (``decode`` or ``both``; least loaded) gets the original request
   with those params and answers the client, streamed or whole.

Both calls go through the dispatcher's one retry loop, so a failure in either phase
fails over before the first byte. The orchestration is ``Dispatcher._open_pd``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

PREFILL, DECODE = "prefill", "decode"
SERVES = {PREFILL: ("prefill", "both"), DECODE: ("decode", "both")}
# What the prefill request carries (vLLM's toy proxy / vllm-router, verbatim keys).
PREFILL_PARAMS = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


def disaggregated(roles: Iterable[str | None]) -> bool:
    """Does a model with engines of these roles run P/D?"""
    return any(r in (PREFILL, DECODE) for r in roles)


def serves(role: str | None, phase: str) -> bool:
    return role in SERVES[phase]


def prefill_body(body: bytes) -> bytes:
    """The prefill request: whole, one token, asking the engine to keep the KV."""
    data: dict[str, Any] = orjson.loads(body)
    data["stream"] = False
    data.pop("stream_options", None)
    data.pop("min_tokens", None)
    data["max_tokens"] = 1
    if "max_completion_tokens" in data:
        data["max_completion_tokens"] = 1
    data["kv_transfer_params"] = PREFILL_PARAMS
    return orjson.dumps(data)


def decode_body(body: bytes, params: dict[str, Any] | None) -> bytes:
    """The decode request: the client's, carrying the prefill's params."""
    if params is None:
        return body  # the prefill engine kept nothing: the decode engine computes it all
    data: dict[str, Any] = orjson.loads(body)
    data["kv_transfer_params"] = params
    return orjson.dumps(data)


def params_of(answer: bytes) -> dict[str, Any] | None:
    """The ``kv_transfer_params`` of a prefill answer (``None`` if it has none)."""
    try:
        data = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    params = data.get("kv_transfer_params") if isinstance(data, dict) else None
    return params if isinstance(params, dict) else None


__all__ = [
    "DECODE",
    "PREFILL",
    "PREFILL_PARAMS",
    "decode_body",
    "disaggregated",
    "params_of",
    "prefill_body",
    "serves",
]
