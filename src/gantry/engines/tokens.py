"""A request's prompt as token ids, the way its engine will tokenize it.

Precise prefix routing (``kv_aware``) hashes the prompt's token blocks exactly as vLLM
does, so it needs the same token ids as the engine. Two sources:

* a local ``tokenizer.json`` (``routing.kv_aware.tokenizer``) through the
  ``tokenizers`` package, with chat messages rendered in the ChatML format
  (``<|im_start|>role\\ncontent<|im_end|>\\n`` ... ``<|im_start|>assistant\\n``). This is
  exact for engines whose chat template is ChatML (Qwen, and ``gantry sim``). Engines
  with another template (Llama 3's header tokens, Mistral's ``[INST]``, templates with
  a system-prompt default, tool schemas or dates rendered into the prompt) tokenize chat
  requests differently: use the next source for those;
* the engine's own ``POST /tokenize`` (vLLM and ``gantry sim`` serve it), which renders
  the model's real chat template: exact for any engine, at the price of a round trip.

Results are kept in a bounded LRU keyed by a digest of the request's prompt, so a
repeated prompt is tokenized once. Any failure (no engine, time-out, an answer without
``tokens``) gives ``None``: routing then scores by the approximate prefix index.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

from gantry.engines.transport import EngineRequest, EngineTransport

log = logging.getLogger("gantry.tokens")


def render_chatml(messages: Sequence[Any]) -> str | None:
    """Chat messages as ChatML text with the assistant prompt, or None if the messages
    hold something other than text (images, tool calls: let the engine render them)."""
    out = []
    for m in messages:
        if not isinstance(m, dict):
            return None
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: text only
            texts = [p.get("text") for p in content if isinstance(p, dict)]
            if not all(isinstance(t, str) for t in texts):
                return None
            content = "".join(texts)  # type: ignore[arg-type]
        if content is None:
            content = ""
        if not isinstance(content, str) or m.get("tool_calls"):
            return None
        out.append(f"<|im_start|>{m.get('role', 'user')}\n{content}<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    return "".join(out)


def prompt_text(body: dict[str, Any]) -> str | None:
    """The prompt as text, for approximate prefix matching (no tokenizer needed)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return render_chatml(messages)
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else None


class PromptTokens:
    def __init__(
        self, *, tokenizer_path: str | None = None, cache: int = 4096, timeout_s: float = 2.0
    ) -> None:
        self._local: Any = None
        if tokenizer_path:
            from tokenizers import Tokenizer  # the `tokenizers` extra

            self._local = Tokenizer.from_file(tokenizer_path)
        self._cache: OrderedDict[bytes, list[int]] = OrderedDict()
        self._max = cache
        self._timeout = timeout_s
        self.hits = 0
        self.misses = 0

    @property
    def local(self) -> bool:
        """Tokens come from a local tokenizer (no engine round trip)."""
        return self._local is not None

    async def of(
        self, body: dict[str, Any], model: str, engine: EngineTransport | None
    ) -> list[int] | None:
        """Token ids of the request's prompt, or None when they cannot be known."""
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
            return list(prompt)  # already token ids
        messages = body.get("messages")
        if not isinstance(messages, list) and not isinstance(prompt, str):
            return None
        key = hashlib.blake2b(
            orjson.dumps([model, messages if messages is not None else prompt]), digest_size=16
        ).digest()
        ids = self._cache.get(key)
        if ids is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return ids
        self.misses += 1
        ids = self._encode_locally(messages, prompt)
        if ids is None and engine is not None:
            ids = await self._ask(engine, model, messages, prompt)
        if ids is not None and self._max:
            self._cache[key] = ids
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return ids

    def _encode_locally(self, messages: Any, prompt: Any) -> list[int] | None:
        if self._local is None:
            return None
        text = render_chatml(messages) if messages is not None else prompt
        if not isinstance(text, str):
            return None
        return list(self._local.encode(text, add_special_tokens=False).ids)

    async def _ask(
        self, engine: EngineTransport, model: str, messages: Any, prompt: Any
    ) -> list[int] | None:
        body: dict[str, Any] = {"model": model}
        if messages is not None:
            body["messages"] = messages
            body["add_generation_prompt"] = True
        else:
            body["prompt"] = prompt
        try:
            resp = await engine.send(
                EngineRequest(
                    "POST",
                    "/tokenize",
                    orjson.dumps(body),
                    {"content-type": "application/json"},
                    connect_timeout=self._timeout,
                    read_timeout=self._timeout,
                )
            )
            data = await resp.read()
            if resp.status != 200:
                return None
            tokens = orjson.loads(data).get("tokens")
        except Exception as exc:  # routing falls back to the approximate index
            log.debug("tokenize failed: %s", type(exc).__name__)
            return None
        if isinstance(tokens, list) and all(type(t) is int for t in tokens):
            return tokens
        return None
