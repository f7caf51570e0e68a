"""Tokenizers for the simulator.

The built-in tokenizer (``builtin``) is deterministic, reversible and needs no files:

* ids 0-255 are raw UTF-8 bytes (the fallback, so any text round-trips);
* ids 256-259 are special tokens: ``<|endoftext|>`` (EOS), ``<|im_start|>``,
  ``<|im_end|>``, ``<|pad|>``;
* ids from 260 are "pieces": an optional leading space, then one ASCII letter and up
  to two lowercase letters (``" The"``, ``"ing"``, ``" x"``). English text averages
  about 3.3 characters per token, close to real BPE vocabularies.

Any id below ``vocab_size`` decodes to a string, so random token-id prompts work.
A model's own ``tokenizer.json`` can be used instead through ``tokenizers``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

_LOWER = "abcdefghijklmnopqrstuvwxyz"
_FIRST = _LOWER + _LOWER.upper()
_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
_PIECE_BASE = 256 + len(_SPECIALS)
# piece index = space(0/1) * N_BODY + body index; bodies: first letter + 0..2 lowercase
_N1, _N2, _N3 = 52, 52 * 26, 52 * 26 * 26
_N_BODY = _N1 + _N2 + _N3
_PIECE_RE = re.compile(r" ?[A-Za-z][a-z]{0,2}|[^A-Za-z]", re.ASCII)
_SPECIAL_RE = re.compile("|".join(re.escape(s) for s in _SPECIALS))


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eos_token_id: int

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]: ...

    def decode(self, ids: list[int], *, skip_special: bool = True) -> str: ...

    def token_text(self, token_id: int) -> str: ...


def _body_index(body: str) -> int:
    first = _FIRST.index(body[0])
    if len(body) == 1:
        return first
    if len(body) == 2:
        return _N1 + first * 26 + _LOWER.index(body[1])
    return _N1 + _N2 + (first * 26 + _LOWER.index(body[1])) * 26 + _LOWER.index(body[2])


def _body_of(index: int) -> str:
    if index < _N1:
        return _FIRST[index]
    index -= _N1
    if index < _N2:
        return _FIRST[index // 26] + _LOWER[index % 26]
    index -= _N2
    rest, c3 = divmod(index, 26)
    first, c2 = divmod(rest, 26)
    return _FIRST[first] + _LOWER[c2] + _LOWER[c3]


class BuiltinTokenizer:
    """The documented deterministic tokenizer (see module docstring)."""

    name = "builtin"
    vocab_size = _PIECE_BASE + 2 * _N_BODY
    eos_token_id = 256
    special_ids = {_PIECE_BASE - len(_SPECIALS) + i: s for i, s in enumerate(_SPECIALS)}

    def __init__(self) -> None:
        self._piece_cache: dict[str, int] = {}
        self._text_cache: dict[int, str] = {}

    def _encode_plain(self, text: str, out: list[int]) -> None:
        cache = self._piece_cache
        for m in _PIECE_RE.finditer(text):
            piece = m.group()
            tid = cache.get(piece)
            if tid is None:
                if piece[0] == " " and len(piece) > 1:
                    tid = _PIECE_BASE + _N_BODY + _body_index(piece[1:])
                elif piece.isascii() and piece.isalpha():
                    tid = _PIECE_BASE + _body_index(piece)
                else:
                    out.extend(piece.encode("utf-8"))
                    continue
                if len(cache) < 200_000:  # bounded: at most every piece once
                    cache[piece] = tid
            out.append(tid)

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        out: list[int] = []
        if allow_special and "<|" in text:
            pos = 0
            for m in _SPECIAL_RE.finditer(text):
                self._encode_plain(text[pos : m.start()], out)
                out.append(256 + _SPECIALS.index(m.group()))
                pos = m.end()
            self._encode_plain(text[pos:], out)
        else:
            self._encode_plain(text, out)
        return out

    def token_text(self, token_id: int) -> str:
        text = self._text_cache.get(token_id)
        if text is not None:
            return text
        tid = token_id % self.vocab_size
        if tid < 256:
            text = bytes([tid]).decode("utf-8", errors="replace")
        elif tid < _PIECE_BASE:
            text = _SPECIALS[tid - 256]
        else:
            idx = tid - _PIECE_BASE
            space, body = divmod(idx, _N_BODY)
            text = (" " if space else "") + _body_of(body)
        if len(self._text_cache) < 200_000:
            self._text_cache[token_id] = text
        return text

    def decode(self, ids: list[int], *, skip_special: bool = True) -> str:
        out: list[str] = []
        pending = bytearray()
        for tid in ids:
            t = tid % self.vocab_size
            if t < 256:
                pending.append(t)
                continue
            if pending:
                out.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            if t < _PIECE_BASE and skip_special:
                continue
            out.append(self.token_text(t))
        if pending:
            out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)


class HFTokenizer:
    """A model's own ``tokenizer.json`` through the ``tokenizers`` library."""

    def __init__(self, path: str | Path) -> None:
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError as exc:  # pragma: no cover - optional extra
            raise RuntimeError("tokenizer.json needs the 'tokenizers' package") from exc
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        try:
            self._tok = _Tok.from_file(str(p))
        except Exception as exc:
            raise ValueError(f"cannot load tokenizer {p}: {exc}") from exc
        self.name = str(p)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        eos = None
        for cand in ("<|endoftext|>", "</s>", "<|eot_id|>", "<|im_end|>", "<eos>"):
            eos = self._tok.token_to_id(cand)
            if eos is not None:
                break
        self.eos_token_id = eos if eos is not None else 0

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int], *, skip_special: bool = True) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=skip_special))

    def token_text(self, token_id: int) -> str:
        return str(self._tok.decode([token_id], skip_special_tokens=False))


def load_tokenizer(spec: str | None) -> Tokenizer:
    if not spec or spec == "builtin":
        return BuiltinTokenizer()
    return HFTokenizer(spec)


def render_chat(messages: list[dict[str, object]], *, add_generation_prompt: bool = True) -> str:
    """ChatML rendering, the template the simulator uses for every model."""
    parts = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        elif content is None:
            content = ""
        parts.append(f"<|im_start|>{msg.get('role')}\n{content}<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)
