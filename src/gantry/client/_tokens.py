"""Token estimation before sending, the context check, and chunking by tokens.

Three counters, one interface (``count``, ``spans``, ``count_messages``):

* ``HFTokenizerCounter``: the model's own ``tokenizer.json`` through ``tokenizers``
  (``pip install 'gantry[tokenizers]'``): exact for the text, a few tokens of chat
  template estimated per message.
* ``EngineTokenizerCounter``: the in-process engine's tokenizer (the simulator's):
  exact, chat template included.
* ``HeuristicCounter``: no files needed. One token per run of up to 7 ASCII letters
  (with its leading space), per run of up to 3 digits and per any other character;
  whitespace runs beyond one space count one token. This is close to a BPE
  tokenizer on English prose and errs on the high side for code and non-Latin
  scripts; the server's own check stays the last word.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from gantry.client._errors import BadRequestError, ContextOverflowError

# Chat-template overhead when the template itself is not applied: role markers and
# separators (~4 a message, as OpenAI documents for its chat format) plus the
# assistant's generation prompt.
PER_MESSAGE = 4
PER_CHAT = 3
_PIECE = re.compile(r" ?[A-Za-z]{1,7}| ?\d{1,3}|\s+|[^\sA-Za-z\d]", re.ASCII)


def message_text(m: dict[str, Any]) -> str:
    content = m.get("content")
    if isinstance(content, list):  # content parts: count the text parts
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    text = str(content or "")
    for call in m.get("tool_calls") or ():
        fn = call.get("function") or {}
        text += fn.get("name", "") + fn.get("arguments", "")
    return text


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int: ...

    def spans(self, text: str) -> list[tuple[int, int]]: ...

    def count_messages(self, messages: Sequence[dict[str, Any]]) -> int: ...


class _TemplateEstimate:
    """``count_messages`` from ``count`` plus the documented template overhead."""

    def count(self, text: str) -> int:
        raise NotImplementedError

    def count_messages(self, messages: Sequence[dict[str, Any]]) -> int:
        return PER_CHAT + sum(PER_MESSAGE + self.count(message_text(m)) for m in messages)


class HeuristicCounter(_TemplateEstimate):
    name = "heuristic"

    def count(self, text: str) -> int:
        return sum(1 for _ in _PIECE.finditer(text))

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _PIECE.finditer(text)]

    def __repr__(self) -> str:
        return "<HeuristicCounter>"


class HFTokenizerCounter(_TemplateEstimate):
    """A model's ``tokenizer.json`` (a file, or a directory holding one)."""

    def __init__(self, path: str | Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise BadRequestError(
                "counting with a tokenizer.json needs the tokenizers package: "
                "pip install 'gantry[tokenizers]'"
            ) from None
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        try:
            self._tok = Tokenizer.from_file(str(p))
        except Exception as exc:  # tokenizers raises plain Exception for a bad file
            raise BadRequestError(f"cannot load tokenizer {p}: {exc}") from None
        self.name = str(p)

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [tuple(o) for o in self._tok.encode(text, add_special_tokens=False).offsets]  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"<HFTokenizerCounter {self.name}>"


class EngineTokenizerCounter:
    """An in-process engine's tokenizer and chat rendering: exact counts."""

    def __init__(self, tokenizer: Any, render: Any) -> None:
        self._tok = tokenizer
        self._render = render
        self.name = f"engine:{getattr(tokenizer, 'name', 'tokenizer')}"

    def count(self, text: str) -> int:
        return len(self._tok.encode(text))

    def count_messages(self, messages: Sequence[dict[str, Any]]) -> int:
        return self.count(self._render(list(messages)))

    def spans(self, text: str) -> list[tuple[int, int]]:
        out, pos = [], 0
        for t in self._tok.encode(text, allow_special=False):
            piece = self._tok.token_text(t)
            out.append((pos, pos + len(piece)))
            pos += len(piece)
        if pos != len(text):  # not reversible piece by piece: cut where the heuristic would
            return HeuristicCounter().spans(text)
        return out

    def __repr__(self) -> str:
        return f"<EngineTokenizerCounter {self.name}>"


def check_fit(prompt_tokens: int, max_tokens: int | None, context_length: int) -> int:
    """The tokens left for the completion; ``ContextOverflowError`` when the prompt and
    ``max_tokens`` (at least one token when not given) do not fit."""
    wanted = max_tokens if max_tokens is not None else 1
    if prompt_tokens + wanted > context_length:
        raise ContextOverflowError(prompt_tokens, wanted, context_length)
    return context_length - prompt_tokens


def chunk_text(
    text: str, max_tokens: int, overlap: int = 0, counter: TokenCounter | None = None
) -> list[str]:
    """``text`` cut into pieces of at most ``max_tokens`` tokens, each starting
    ``overlap`` tokens before the previous one ended. Cuts fall on token boundaries; with
    the heuristic and engine counters the pieces, minus their overlaps, put back
    together are the text (a tokenizer.json's offsets may leave out the whitespace
    between two pieces)."""
    if max_tokens < 1 or not 0 <= overlap < max_tokens:
        raise ValueError("need max_tokens >= 1 and 0 <= overlap < max_tokens")
    spans = (counter or HeuristicCounter()).spans(text)
    if not spans:
        return [text] if text else []
    step = max_tokens - overlap
    chunks = []
    for start in range(0, len(spans), step):
        window = spans[start : start + max_tokens]
        end = len(text) if start + max_tokens >= len(spans) else window[-1][1]
        begin = 0 if start == 0 else window[0][0]
        chunks.append(text[begin:end])
        if start + max_tokens >= len(spans):
            break
    return chunks


__all__ = [
    "EngineTokenizerCounter",
    "HFTokenizerCounter",
    "HeuristicCounter",
    "TokenCounter",
    "check_fit",
    "chunk_text",
]
