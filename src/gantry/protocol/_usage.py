"""Token usage from OpenAI-shaped answers: the one parser the gateway and bench share.

``usage`` objects look like ``{"prompt_tokens": 12, "completion_tokens": 16,
"prompt_tokens_details": {"cached_tokens": 8}}``; engines write them compact (vLLM) or
pretty-printed, with keys in any order, and sometimes ``"usage": null``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

# Bodies below this size are parsed whole (~2 us for 1 KB); larger ones (embeddings)
# are read from the tail, where OpenAI-shaped answers put ``usage``.
_PARSE_WHOLE = 64 * 1024
_TAIL_RE = re.compile(rb'"(prompt_tokens|completion_tokens|cached_tokens)"\s*:\s*(\d+)')


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


def usage_of(obj: Any) -> Usage | None:
    """The usage of a decoded answer or chunk, or None when it carries none."""
    if not isinstance(obj, dict):
        return None
    u = obj.get("usage")
    if not isinstance(u, dict):
        return None
    details = u.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(_int(u.get("prompt_tokens")), _int(u.get("completion_tokens")), _int(cached))


def usage_of_body(data: bytes) -> Usage | None:
    """The usage of a whole (non-streamed) JSON answer."""
    if len(data) <= _PARSE_WHOLE:
        try:
            return usage_of(orjson.loads(data))
        except orjson.JSONDecodeError:
            return None
    pos = data.rfind(b'"usage"')
    if pos < 0:
        return None
    found = {k.decode(): int(v) for k, v in _TAIL_RE.findall(data, pos)}
    if not found:
        return None
    return Usage(
        found.get("prompt_tokens", 0),
        found.get("completion_tokens", 0),
        found.get("cached_tokens", 0),
    )


def _int(v: Any) -> int:
    return v if type(v) is int and v > 0 else 0
