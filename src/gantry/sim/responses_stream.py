"""Streaming ``/v1/responses``: the chat handler's SSE chunks, re-sent as the Responses
API's events (vLLM ``openai/responses/serving.py``, ``responses_stream_generator``).

Each event is ``event: <type>\\ndata: <json>\\n\\n`` with a ``sequence_number`` counting
from 0, and no ``[DONE]``::

    response.created, response.in_progress          (the response, in progress)
    response.output_item.added                      (the assistant message, empty)
    response.content_part.added                     (an empty output_text part)
    response.output_text.delta ...                  (one per streamed chunk of text)
    response.output_text.done, response.content_part.done, response.output_item.done
    response.completed | response.incomplete         (the whole response, with usage;
                                                     incomplete when max_output_tokens cut it)

``ResponsesRelay`` is the ``send`` handed to the chat handler: it parses the chat
chunks as they come (the engine paces them, so the deltas keep the engine's timing) and
sends the events in their place. An error answer (not 200) is passed through unchanged.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import MutableMapping
from typing import Any

import orjson

from gantry.protocol import SSE, Send


class ResponsesRelay:
    def __init__(self, send: Send, request: dict[str, Any], build: Any) -> None:
        self._send = send
        self._request = request
        self._build = build  # chat_to_response(chat, request, **ids) -> response dict
        self._status = 0
        self._buf = b""
        self._seq = 0
        self._started = False
        self._text: list[str] = []
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self._model = str(request.get("model") or "")
        self._ids = {
            "response_id": "resp_" + secrets.token_hex(16),
            "message_id": "msg_" + secrets.token_hex(16),
            "created_at": int(time.time()),
        }

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self._status = message["status"]
            if self._status != 200:
                await self._send(message)
                return
            headers = [(k, v) for k, v in message.get("headers", ()) if k != b"content-type"]
            await self._send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", SSE), *headers],
                }
            )
            return
        if message["type"] != "http.response.body":
            return
        if self._status != 200:
            await self._send(message)
            return
        self._buf += message.get("body", b"")
        out: list[bytes] = []
        while b"\n\n" in self._buf:
            frame, self._buf = self._buf.split(b"\n\n", 1)
            for line in frame.split(b"\n"):
                if line.startswith(b"data: "):
                    out.extend(self._on_chunk(line[6:]))
        more = bool(message.get("more_body", False))
        if not more and not out and not self._started:
            out.extend(self._begin())
        body = b"".join(out)
        if body or not more:
            await self._send({"type": "http.response.body", "body": body, "more_body": more})

    # -- chat chunks -> events -----------------------------------------------------------
    def _on_chunk(self, data: bytes) -> list[bytes]:
        if data.strip() == b"[DONE]":
            return self._end()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(chunk, dict):
            return []
        out = [] if self._started else self._begin(chunk.get("model"))
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = (choice.get("delta") or {}).get("content")
            if delta:
                self._text.append(delta)
                out.append(
                    self._event(
                        "response.output_text.delta",
                        {**self._where(), "delta": delta, "logprobs": []},
                    )
                )
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def _begin(self, model: Any = None) -> list[bytes]:
        self._started = True
        if isinstance(model, str) and model:
            self._model = model
        pending = self._response("in_progress")
        item = {
            "id": self._ids["message_id"],
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        return [
            self._event("response.created", {"response": pending}),
            self._event("response.in_progress", {"response": pending}),
            self._event("response.output_item.added", {"output_index": 0, "item": item}),
            self._event(
                "response.content_part.added",
                {**self._where(), "part": _part("")},
            ),
        ]

    def _end(self) -> list[bytes]:
        out = [] if self._started else self._begin()
        final = self._response(None)
        text = "".join(self._text)
        out += [
            self._event(
                "response.output_text.done", {**self._where(), "text": text, "logprobs": []}
            ),
            self._event("response.content_part.done", {**self._where(), "part": _part(text)}),
            self._event(
                "response.output_item.done", {"output_index": 0, "item": final["output"][0]}
            ),
        ]
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        out.append(self._event(kind, {"response": final}))
        return out

    # -- shapes -------------------------------------------------------------------------
    def _response(self, status: str | None) -> dict[str, Any]:
        chat = {
            "model": self._model,
            "choices": [
                {
                    "finish_reason": self._finish,
                    "message": {"role": "assistant", "content": "".join(self._text)},
                }
            ],
            "usage": self._usage,
        }
        resp: dict[str, Any] = self._build(chat, self._request, **self._ids)
        if status is not None:  # still running: no output, no usage yet
            resp.update(status=status, output=[], usage=None, incomplete_details=None)
        return resp

    def _where(self) -> dict[str, Any]:
        return {"item_id": self._ids["message_id"], "output_index": 0, "content_index": 0}

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        data = orjson.dumps({"type": kind, "sequence_number": self._seq, **fields})
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
