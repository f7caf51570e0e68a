"""What the client sends and gets back, the same in every mode.

``Request`` is one chat or completion request as an OpenAI body; results are parsed from
OpenAI-shaped JSON in one place (``parse_completion``, ``parse_chunk``), whichever engine
produced them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypedDict


class Options(TypedDict, total=False):
    """Generation options, as in the OpenAI API (``extra`` goes into the body as is)."""

    model: str
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: str | list[str]
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    response_format: dict[str, Any]
    n: int
    extra: dict[str, Any]


_PASSED = (
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "tools",
    "tool_choice",
    "response_format",
    "n",
)


@dataclass(frozen=True, slots=True)
class Request:
    """One generation request: ``chat`` (``messages``) or a completion (``prompt``)."""

    chat: bool
    body: dict[str, Any]

    @classmethod
    def build(cls, chat: bool, payload: Any, model: str, opts: Options) -> Request:
        body: dict[str, Any] = {"model": opts.get("model") or model}
        body["messages" if chat else "prompt"] = payload
        for key in _PASSED:
            if key in opts:
                body[key] = opts[key]  # type: ignore[literal-required]
        body.update(opts.get("extra") or {})
        return cls(chat, body)

    @property
    def model(self) -> str:
        return str(self.body.get("model") or "")

    @property
    def max_tokens(self) -> int | None:
        v = self.body.get("max_completion_tokens", self.body.get("max_tokens"))
        return v if isinstance(v, int) else None

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.chat else "/v1/completions"


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str

    def parsed_arguments(self) -> Any:
        return json.loads(self.arguments)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    text: str
    finish_reason: str | None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole answer. ``text``, ``tool_calls`` and ``finish_reason`` are the first
    choice's; ``raw`` is the JSON as the engine sent it."""

    id: str
    model: str
    choices: tuple[Choice, ...]
    usage: Usage
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def text(self) -> str:
        return self.choices[0].text if self.choices else ""

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self.choices[0].tool_calls if self.choices else ()

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None

    def json(self) -> Any:
        """The first choice's text parsed as JSON (JSON mode)."""
        return json.loads(self.text)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One streamed piece: a text delta (or tool-call argument delta) of one choice, or
    the final usage (``usage`` set, ``text`` empty)."""

    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    tool_name: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class Embedding:
    index: int
    vector: tuple[float, ...]


def _usage(u: Any) -> Usage:
    if not isinstance(u, dict):
        return Usage()
    return Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))


def _tool_calls(calls: Any) -> tuple[ToolCall, ...]:
    out = []
    for c in calls or ():
        fn = c.get("function") or {}
        out.append(ToolCall(str(c.get("id", "")), str(fn.get("name", "")), fn.get("arguments", "")))
    return tuple(out)


def parse_completion(data: dict[str, Any], chat: bool) -> Completion:
    choices = []
    for c in data.get("choices") or ():
        if chat:
            msg = c.get("message") or {}
            calls = _tool_calls(msg.get("tool_calls"))
            text = msg.get("content") or ""
        else:
            calls, text = (), c.get("text") or ""
        choices.append(Choice(int(c.get("index", 0)), text, c.get("finish_reason"), calls))
    choices.sort(key=lambda c: c.index)
    return Completion(
        str(data.get("id", "")),
        str(data.get("model", "")),
        tuple(choices),
        _usage(data.get("usage")),
        data,
    )


def parse_chunk(data: dict[str, Any], chat: bool) -> list[Chunk]:
    out = []
    for c in data.get("choices") or ():
        if chat:
            delta = c.get("delta") or {}
            calls = delta.get("tool_calls")
            if calls:
                fn = calls[0].get("function") or {}
                text, name = fn.get("arguments") or "", fn.get("name")
            else:
                text, name = delta.get("content") or "", None
        else:
            text, name = c.get("text") or "", None
        out.append(Chunk(int(c.get("index", 0)), text, c.get("finish_reason"), name))
    if data.get("usage") and not data.get("choices"):
        out.append(Chunk(usage=_usage(data["usage"])))
    return out


def join_chunks(chunks: list[Chunk]) -> str:
    """The text of choice 0 from a list of chunks."""
    return "".join(c.text for c in chunks if c.index == 0)


__all__ = [
    "Choice",
    "Chunk",
    "Completion",
    "Embedding",
    "Options",
    "Request",
    "ToolCall",
    "Usage",
    "join_chunks",
    "parse_chunk",
    "parse_completion",
]
