"""Inspect an OpenAI request body without rewriting it.

The gateway forwards bodies untouched (vLLM's extra fields included); it only needs
a few facts about each request, checked for type once here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ENDPOINT_CHAT = "/v1/chat/completions"
ENDPOINT_COMPLETIONS = "/v1/completions"
ENDPOINT_EMBEDDINGS = "/v1/embeddings"


class RequestShapeError(ValueError):
    """The body is JSON but not a valid request for the endpoint."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class RequestInfo:
    endpoint: str
    model: str | None
    stream: bool
    include_usage: bool
    max_tokens: int | None
    user: str | None


def _expect(cond: bool, message: str, param: str) -> None:
    if not cond:
        raise RequestShapeError(message, param)


def inspect_request(endpoint: str, body: Any) -> RequestInfo:
    """Check the fields the gateway relies on; raise RequestShapeError otherwise."""
    _expect(isinstance(body, dict), "Request body must be a JSON object.", "body")
    model = body.get("model")
    _expect(model is None or isinstance(model, str), "'model' must be a string.", "model")
    stream = body.get("stream", False)
    _expect(stream is None or isinstance(stream, bool), "'stream' must be a boolean.", "stream")
    opts = body.get("stream_options")
    _expect(
        opts is None or isinstance(opts, dict),
        "'stream_options' must be an object.",
        "stream_options",
    )
    include_usage = bool(opts.get("include_usage")) if opts else False
    user = body.get("user")
    _expect(user is None or isinstance(user, str), "'user' must be a string.", "user")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    _expect(
        max_tokens is None or (isinstance(max_tokens, int) and not isinstance(max_tokens, bool)),
        "'max_tokens' must be an integer.",
        "max_tokens",
    )
    if endpoint == ENDPOINT_CHAT:
        messages = body.get("messages")
        _expect(messages is not None, "'messages' is a required property.", "messages")
        _expect(
            isinstance(messages, list) and len(messages) > 0,
            "'messages' must be a non-empty array.",
            "messages",
        )
        for i, msg in enumerate(messages):
            _expect(isinstance(msg, dict), f"'messages[{i}]' must be an object.", "messages")
            _expect(
                isinstance(msg.get("role"), str),
                f"'messages[{i}].role' is a required string.",
                "messages",
            )
    elif endpoint == ENDPOINT_COMPLETIONS:
        prompt = body.get("prompt")
        _expect(prompt is not None, "'prompt' is a required property.", "prompt")
        _expect(isinstance(prompt, str | list), "'prompt' must be a string or an array.", "prompt")
    elif endpoint == ENDPOINT_EMBEDDINGS:
        inp = body.get("input")
        _expect(inp is not None, "'input' is a required property.", "input")
    return RequestInfo(
        endpoint=endpoint,
        model=model,
        stream=bool(stream),
        include_usage=include_usage,
        max_tokens=max_tokens,
        user=user,
    )
