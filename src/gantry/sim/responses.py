"""vLLM's response and SSE chunk shapes (v0.33), byte for byte where it matters.

Chunks are built from per-request templates: only the text and finish fields vary, so
most of each chunk is a pre-encoded byte string (orjson per chunk is the only cost).
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from gantry.sim.validate import ToolPlan

_dumps = orjson.dumps


def usage(prompt: int, completion: int, cached: int | None) -> dict[str, Any]:
    u: dict[str, Any] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }
    if cached is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return u


def random_id() -> str:
    return secrets.token_hex(8)  # vLLM v0.33 random_uuid: 16 hex chars


class ChunkWriter:
    """Encodes the SSE chunks of one streamed response."""

    __slots__ = ("_chat", "_created", "_fingerprint", "_head", "_model", "_rid")

    def __init__(self, *, chat: bool, rid: str, created: int, model: str, fingerprint: str):
        self._chat = chat
        self._rid, self._created, self._model = rid, created, model
        self._fingerprint = fingerprint
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._head = (
            b'data: {"id":'
            + _dumps(rid)
            + b',"object":"'
            + obj.encode()
            + b'","created":'
            + str(created).encode()
            + b',"model":'
            + _dumps(model)
            + b',"choices":['
        )

    def role(
        self,
        index: int,
        cont_usage: dict[str, Any] | None = None,
        prompt_token_ids: list[int] | None = None,
    ) -> bytes:
        tail = b'],"prompt_token_ids":' + _dumps(prompt_token_ids) + b',"prompt_text":null'
        if cont_usage is not None:
            tail += b',"usage":' + _dumps(cont_usage)
        return (
            self._head
            + b'{"index":'
            + str(index).encode()
            + b',"delta":{"role":"assistant","content":""},"logprobs":null,'
            b'"finish_reason":null}' + tail + b"}\n\n"
        )

    def token(
        self,
        index: int,
        text: str,
        finish: str | None,
        stop_reason: str | int | None,
        *,
        fingerprint: bool = False,
        cont_usage: dict[str, Any] | None = None,
        tool_delta: list[dict[str, Any]] | None = None,
        extras: dict[str, Any] | None = None,
    ) -> bytes:
        idx = str(index).encode()
        lp = ids = pids = b"null"
        if extras:  # logprobs / return_token_ids were asked for
            lp = _dumps(extras.get("logprobs"))
            ids = _dumps(extras.get("token_ids"))
            pids = _dumps(extras.get("prompt_token_ids"))
        if self._chat:
            if tool_delta is not None:
                delta = b'{"tool_calls":' + _dumps(tool_delta) + b"}"
            else:
                delta = b'{"content":' + _dumps(text) + b"}"
            choice = b'{"index":' + idx + b',"delta":' + delta + b',"logprobs":' + lp
        else:
            choice = b'{"index":' + idx + b',"text":' + _dumps(text) + b',"logprobs":' + lp
        if finish is None:
            choice += (
                b',"finish_reason":null,"token_ids":' + ids + b"}"
                if self._chat
                else b',"finish_reason":null,"stop_reason":null,"prompt_token_ids":'
                + pids
                + b',"token_ids":'
                + ids
                + b',"weight_versions":null}'
            )
        else:
            choice += (
                b',"finish_reason":' + _dumps(finish) + b',"stop_reason":' + _dumps(stop_reason)
            )
            choice += (
                b',"token_ids":' + ids + b',"weight_versions":null}'
                if self._chat
                else b',"prompt_token_ids":'
                + pids
                + b',"token_ids":'
                + ids
                + b',"weight_versions":null}'
            )
        tail = b'],"kv_transfer_params":null'
        if cont_usage is not None:
            tail += b',"usage":' + _dumps(cont_usage)
        if fingerprint:
            tail += b',"system_fingerprint":' + _dumps(self._fingerprint)
        return self._head + choice + tail + b"}\n\n"

    def usage(self, u: dict[str, Any]) -> bytes:
        return (
            self._head
            + b'],"usage":'
            + _dumps(u)
            + b',"system_fingerprint":'
            + _dumps(self._fingerprint)
            + b"}\n\n"
        )


def tool_call_id() -> str:
    return "chatcmpl-tool-" + secrets.token_hex(16)


def completion_body(
    *,
    rid: str,
    created: int,
    model: str,
    fingerprint: str,
    choices: list[dict[str, Any]],
    usage_: dict[str, Any],
) -> bytes:
    full_usage = {**usage_, "completion_tokens_details": None}
    full_usage.setdefault("prompt_tokens_details", None)
    return _dumps(
        {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": c["index"],
                    "text": c["text"],
                    "logprobs": c.get("logprobs"),
                    "finish_reason": c["finish_reason"],
                    "stop_reason": c["stop_reason"],
                    "token_ids": c.get("token_ids"),
                    "prompt_logprobs": c.get("prompt_logprobs"),
                    "prompt_token_ids": c.get("prompt_token_ids"),
                    "routed_experts": None,
                    "weight_versions": None,
                }
                for c in choices
            ],
            "service_tier": None,
            "system_fingerprint": fingerprint,
            "usage": full_usage,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


def chat_body(
    *,
    rid: str,
    created: int,
    model: str,
    fingerprint: str,
    choices: list[dict[str, Any]],
    usage_: dict[str, Any],
    tool: ToolPlan | None,
    prompt: dict[str, Any] | None = None,
) -> bytes:
    """``prompt`` holds the response-level ``prompt_logprobs``/``prompt_token_ids``."""
    prompt = prompt or {}
    full_usage = {**usage_, "completion_tokens_details": None}
    full_usage.setdefault("prompt_tokens_details", None)
    out = []
    for c in choices:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": c["text"],
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "reasoning": None,
        }
        finish = c["finish_reason"]
        if tool is not None:
            # A forced call (named or "required") answers content "" in vLLM's
            # serving.py; a call the parser extracted under "auto" has no content.
            message["content"] = None if tool.auto else ""
            message["tool_calls"] = [
                {
                    "id": tool_call_id(),
                    "type": "function",
                    "function": {"name": tool.name, "arguments": c["text"]},
                }
            ]
            if not tool.named and finish == "stop":
                finish = "tool_calls"
        out.append(
            {
                "index": c["index"],
                "message": message,
                "logprobs": c.get("logprobs"),
                "finish_reason": finish,
                "stop_reason": c["stop_reason"],
                "token_ids": c.get("token_ids"),
                "routed_experts": None,
                "weight_versions": None,
            }
        )
    return _dumps(
        {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": out,
            "service_tier": None,
            "system_fingerprint": fingerprint,
            "usage": full_usage,
            "prompt_logprobs": prompt.get("prompt_logprobs"),
            "prompt_token_ids": prompt.get("prompt_token_ids"),
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )
