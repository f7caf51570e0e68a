"""``POST /v1/responses`` and ``POST /inference/v1/generate``, over the chat and
completions paths.

Each request is rewritten into a chat or completions body, run through the server's
own handler (same engine, validation, admission, errors), and its answer re-shaped:

* ``/v1/responses`` (vLLM ``openai/responses/serving.py``), streamed as the Responses
  API's events (``gantry.sim.responses_stream``) or whole: ``input`` as a string or a
  list of messages (``content`` a string or ``input_text`` parts), ``instructions`` as
  a system message, ``max_output_tokens``, ``temperature``, ``top_p``; the answer is a
  ``response`` object with one assistant ``message`` holding an ``output_text`` part,
  and ``usage`` in the Responses shape.
* ``/inference/v1/generate`` (vLLM ``serve/disagg``): token ids in, token ids out —
  ``{"token_ids", "sampling_params", "request_id"?, "cache_salt"?}`` →
  ``{"request_id", "choices": [{"index", "logprobs", "finish_reason", "token_ids"}],
  "prompt_logprobs", "kv_transfer_params"}``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

import orjson

from gantry.protocol import Receive, Scope, Send, respond
from gantry.sim.responses_stream import ResponsesRelay
from gantry.sim.validate import VLLMError, schema_error

if TYPE_CHECKING:
    from gantry.sim.server import Handler, SimServer

_SAMPLING = ("temperature", "top_p", "seed", "user")


class _Captured:
    """An ASGI ``send`` that keeps a non-streamed answer instead of sending it."""

    __slots__ = ("body", "headers", "status")

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", ()))
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")


def _replay(body: dict[str, Any], receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once, then the client's own messages."""
    sent = False

    async def inner() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": orjson.dumps(body), "more_body": False}
        return dict(await receive())

    return inner


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        if all(isinstance(t, str) for t in parts):
            return "".join(parts)  # type: ignore[arg-type]
    raise schema_error("input", "Input should be a valid string or list of content parts", "...")


def responses_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses request as the chat request vLLM's serving_responses builds."""
    if body.get("previous_response_id") is not None:
        raise VLLMError(400, "gantry sim: previous_response_id is not simulated", "BadRequestError")
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    inp = body.get("input")
    if isinstance(inp, str):
        messages.append({"role": "user", "content": inp})
    elif isinstance(inp, list) and inp:
        for item in inp:
            if not isinstance(item, dict) or item.get("type", "message") != "message":
                raise schema_error("input", "Only message items are simulated", "...")
            messages.append(
                {"role": item.get("role", "user"), "content": _message_text(item.get("content"))}
            )
    else:
        raise schema_error("input", "Field required", None)
    chat: dict[str, Any] = {"messages": messages}
    for key in ("model", *_SAMPLING):
        if key in body:
            chat[key] = body[key]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def chat_to_response(
    chat: dict[str, Any],
    request: dict[str, Any],
    *,
    response_id: str | None = None,
    message_id: str | None = None,
    created_at: int | None = None,
) -> dict[str, Any]:
    choice = chat["choices"][0]
    usage = chat.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    complete = choice.get("finish_reason") != "length"
    text = choice["message"].get("content") or ""
    return {
        "id": response_id or "resp_" + secrets.token_hex(16),
        "created_at": int(time.time()) if created_at is None else created_at,
        "incomplete_details": None if complete else {"reason": "max_output_tokens"},
        "instructions": request.get("instructions"),
        "metadata": request.get("metadata"),
        "model": chat["model"],
        "object": "response",
        "output": [
            {
                "id": message_id or "msg_" + secrets.token_hex(16),
                "content": [
                    {"annotations": [], "text": text, "type": "output_text", "logprobs": None}
                ],
                "role": "assistant",
                "status": "completed" if complete else "incomplete",
                "type": "message",
            }
        ],
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "temperature": request.get("temperature"),
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "background": False,
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": None,
        "previous_response_id": None,
        "prompt": None,
        "reasoning": None,
        "service_tier": "auto",
        "status": "completed" if complete else "incomplete",
        "text": None,
        "top_logprobs": None,
        "truncation": "disabled",
        "usage": {
            "input_tokens": usage.get("prompt_tokens", 0),
            "input_tokens_details": {"cached_tokens": details.get("cached_tokens") or 0},
            "output_tokens": usage.get("completion_tokens", 0),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.get("total_tokens", 0),
        },
        "user": request.get("user"),
    }


def generate_to_completion(body: dict[str, Any]) -> dict[str, Any]:
    ids = body.get("token_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
        raise schema_error("token_ids", "Input should be a valid list of integers", ids)
    params = body.get("sampling_params")
    if not isinstance(params, dict):
        raise schema_error("sampling_params", "Field required", None)
    if body.get("stream"):
        raise VLLMError(
            400, "gantry sim: streaming /inference/v1/generate is not simulated", "BadRequestError"
        )
    out = {**params, "prompt": ids, "return_token_ids": True, "stream": False}
    for key in ("model", "cache_salt", "kv_transfer_params"):
        if body.get(key) is not None:
            out[key] = body[key]
    return out


def completion_to_generate(completion: dict[str, Any], request_id: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "choices": [
            {
                "index": c["index"],
                "logprobs": None,
                "finish_reason": c.get("finish_reason"),
                "token_ids": c.get("token_ids"),
            }
            for c in completion["choices"]
        ],
        "prompt_logprobs": None,
        "kv_transfer_params": completion.get("kv_transfer_params"),
    }


class SimExtras:
    """The two endpoints of one ``SimServer``."""

    def __init__(self, server: SimServer) -> None:
        self.server = server

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {
            "/v1/responses": {"POST": self._responses},
            "/inference/v1/generate": {"POST": self._generate},
        }

    async def _run(
        self, handler: Handler, body: dict[str, Any], scope: Scope, receive: Receive
    ) -> tuple[_Captured, dict[str, Any] | None]:
        cap = _Captured()
        await handler(scope, _replay(body, receive), cap)
        if cap.status != 200:
            return cap, None
        return cap, orjson.loads(cap.body)

    async def _responses(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def run(scope: Scope, receive: Receive, send: Send) -> None:
            body = await self.server.json_body(scope, receive)
            chat = responses_to_chat(body)
            if chat.get("stream"):
                relay = ResponsesRelay(send, body, chat_to_response)
                await self.server.chat_handler(scope, _replay(chat, receive), relay)
                return
            cap, answer = await self._run(self.server.chat_handler, chat, scope, receive)
            if answer is None:
                await respond(send, cap.status, cap.body)
                return
            await respond(send, 200, orjson.dumps(chat_to_response(answer, body)))

        await self.server.guard(run, scope, receive, send)

    async def _generate(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def run(scope: Scope, receive: Receive, send: Send) -> None:
            if not self.server.r.settings.tokens_only:
                # vLLM mounts the disaggregated-serving routes only with --tokens-only or
                # --enable-scale-out; otherwise they answer 403 PermissionDeniedError.
                raise VLLMError(
                    403,
                    "/inference/v1/generate needs the server started with --tokens-only "
                    "or --enable-scale-out",
                    "PermissionDeniedError",
                )
            body = await self.server.json_body(scope, receive)
            completion = generate_to_completion(body)
            rid = body.get("request_id")
            rid = rid if isinstance(rid, str) and rid else secrets.token_hex(16)
            handler = self.server.completions_handler
            cap, answer = await self._run(handler, completion, scope, receive)
            if answer is None:
                await respond(send, cap.status, cap.body)
                return
            await respond(send, 200, orjson.dumps(completion_to_generate(answer, rid)))

        await self.server.guard(run, scope, receive, send)
