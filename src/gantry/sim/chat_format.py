"""Each model family's chat template, BOS token and vocabulary, close to the real ones.

vLLM renders chat messages with the model's own Jinja template and tokenizes a text
prompt with ``add_special_tokens=True`` (the tokenizer adds BOS where the model has
one); token-id prompts go in unchanged and may use any id below the model's vocabulary
size. The simulator does the same with four families:

* ``chatml`` (Qwen and the default): ``<|im_start|>role\\ncontent<|im_end|>\\n``; no BOS.
* ``llama3``: ``<|begin_of_text|>``, ``<|start_header_id|>role<|end_header_id|>\\n\\n
  content<|eot_id|>``, and Llama 3.1's system block with its knowledge and current dates.
* ``mistral``: ``<s>[INST] user [/INST] answer</s>``, the system prompt folded into the
  first user turn.
* ``gemma``: ``<bos><start_of_turn>user\\n...<end_of_turn>\\n``, the assistant as
  ``model``, the system prompt folded into the first user turn.

With the built-in tokenizer each special token is one id: Llama 3's real ids
(128000 ...), and for the other families the ids right after the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gantry.sim.tokenizer import BuiltinTokenizer, Tokenizer, render_chat

Messages = list[dict[str, Any]]
_LLAMA_DATES = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"


def _text(m: dict[str, Any]) -> str:
    content = m.get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _split_system(messages: Messages) -> tuple[str | None, Messages]:
    if messages and messages[0].get("role") == "system":
        return _text(messages[0]), messages[1:]
    return None, messages


def _llama3(messages: Messages, gen: bool) -> str:
    system, rest = _split_system(messages)
    out = ["<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"]
    out.append(_LLAMA_DATES + (system or "") + "<|eot_id|>")
    for m in rest:
        out.append(f"<|start_header_id|>{m.get('role')}<|end_header_id|>\n\n{_text(m)}<|eot_id|>")
    if gen:
        out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(out)


def _mistral(messages: Messages, gen: bool) -> str:
    system, rest = _split_system(messages)
    out = ["<s>"]
    for m in rest:
        text = _text(m)
        if m.get("role") == "assistant":
            out.append(f" {text}</s>")
        else:
            if system:
                text, system = f"{system}\n\n{text}", None
            out.append(f"[INST] {text} [/INST]")
    return "".join(out)


def _gemma(messages: Messages, gen: bool) -> str:
    system, rest = _split_system(messages)
    out = ["<bos>"]
    for m in rest:
        role = "model" if m.get("role") == "assistant" else "user"
        text = _text(m)
        if system and role == "user":
            text, system = f"{system}\n\n{text}", None
        out.append(f"<start_of_turn>{role}\n{text}<end_of_turn>\n")
    if gen:
        out.append("<start_of_turn>model\n")
    return "".join(out)


def _chatml(messages: Messages, gen: bool) -> str:
    return render_chat(messages, add_generation_prompt=gen)


@dataclass(frozen=True, slots=True)
class ChatFormat:
    family: str
    bos: str | None  # added to text prompts, as add_special_tokens=True does
    eos: str
    specials: tuple[str, ...]  # one token each with the built-in tokenizer
    _render: Callable[[Messages, bool], str]

    def render(self, messages: Messages, *, add_generation_prompt: bool = True) -> str:
        return self._render(messages, add_generation_prompt)


FORMATS = {
    "chatml": ChatFormat("chatml", None, "<|endoftext|>", (), _chatml),
    "llama3": ChatFormat(
        "llama3",
        "<|begin_of_text|>",
        "<|eot_id|>",
        (
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ),
        _llama3,
    ),
    "mistral": ChatFormat("mistral", "<s>", "</s>", ("<s>", "</s>", "[INST]", "[/INST]"), _mistral),
    "gemma": ChatFormat(
        "gemma",
        "<bos>",
        "<end_of_turn>",
        ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"),
        _gemma,
    ),
}
_LLAMA3_IDS = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eot_id|>": 128009,
}


def family_of(*names: str) -> str:
    """The chat family of a model, from its name or Hugging Face id."""
    text = " ".join(names).lower().replace("_", "-")
    if "llama-3" in text or "llama3" in text:
        return "llama3"
    if "mistral" in text or "mixtral" in text:
        return "mistral"
    if "gemma" in text:
        return "gemma"
    return "chatml"


class FormatTokenizer:
    """The built-in tokenizer with a family's special tokens and the model's vocabulary
    size: any id below it is a valid prompt token."""

    name = "builtin"

    def __init__(self, inner: BuiltinTokenizer, fmt: ChatFormat, model_vocab: int) -> None:
        self._inner, self.fmt = inner, fmt
        base = inner.vocab_size  # other families' specials follow the built-in ids
        ids = (
            dict(_LLAMA3_IDS)
            if fmt.family == "llama3"
            else {s: base + i for i, s in enumerate(fmt.specials)}
        )
        self.vocab_size = max(model_vocab, base + len(fmt.specials), *ids.values())
        self._ids = ids
        self._by_id = {v: k for k, v in ids.items()}
        self.eos_token_id = ids.get(fmt.eos, inner.eos_token_id)

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        if not allow_special or not self._ids:
            return self._inner.encode(text, allow_special=allow_special)
        out: list[int] = []
        pos = 0
        while pos < len(text):
            hits = [(text.find(s, pos), s) for s in self._ids]
            at, special = min(((i, s) for i, s in hits if i >= 0), default=(-1, ""))
            if at < 0:
                break
            out += self._inner.encode(text[pos:at])
            out.append(self._ids[special])
            pos = at + len(special)
        out += self._inner.encode(text[pos:])
        return out

    def token_text(self, token_id: int) -> str:
        special = self._by_id.get(token_id)
        return special if special is not None else self._inner.token_text(token_id)

    def decode(self, ids: list[int], *, skip_special: bool = True) -> str:
        out: list[str] = []
        run: list[int] = []
        for t in ids:
            special = self._by_id.get(t)
            if special is None:
                run.append(t)
                continue
            out.append(self._inner.decode(run, skip_special=skip_special))
            run = []
            if not skip_special:
                out.append(special)
        out.append(self._inner.decode(run, skip_special=skip_special))
        return "".join(out)


def for_model(tok: Tokenizer, fmt: ChatFormat, model_vocab: int) -> Tokenizer:
    """The tokenizer the server uses: the built-in one learns the family's specials and
    vocabulary size; a model's own tokenizer (``--tokenizer``) has its own."""
    if isinstance(tok, BuiltinTokenizer):
        return FormatTokenizer(tok, fmt, model_vocab)
    return tok


def prompt_ids(tok: Tokenizer, fmt: ChatFormat, text: str) -> list[int]:
    """A text prompt's ids with ``add_special_tokens=True``: BOS first where the model
    has one (unless the text already starts with it)."""
    ids = tok.encode(text)
    if fmt.bos is not None and not text.startswith(fmt.bos):
        ids = tok.encode(fmt.bos) + ids
    return ids
