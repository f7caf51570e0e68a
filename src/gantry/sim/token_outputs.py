"""Per-choice logprobs and token ids, whole or by streamed delta, as vLLM's serving
code assembles them (``completion/serving.py`` and ``chat_completion/serving.py``)."""

from __future__ import annotations

from typing import Any

from gantry.sim.logprobs import (
    Candidates,
    LogprobRequest,
    Position,
    chat_content,
    completion_logprobs,
    positions,
    prompt_logprobs_json,
    prompt_positions,
)
from gantry.sim.sequence import SimRequest
from gantry.sim.tokenizer import Tokenizer


class TokenOutputs:
    """Builds the logprob / token-id fields of one response's choices."""

    __slots__ = ("_c", "_chat", "_echo", "_prompt_cache", "lp", "tok")

    def __init__(
        self, lp: LogprobRequest, tok: Tokenizer, cands: Candidates, *, chat: bool, echo: bool
    ):
        self.lp, self.tok, self._c, self._chat, self._echo = lp, tok, cands, chat, echo
        self._prompt_cache: dict[int, list[Position | None]] = {}  # by id(prompt list)

    def _prompt(self, req: SimRequest) -> list[Position | None]:
        key = id(req.prompt_token_ids)  # the n choices of one prompt share its list
        got = self._prompt_cache.get(key)
        if got is None:
            got = prompt_positions(self._c, req.prompt_token_ids, self.lp.prompt or 0)
            self._prompt_cache[key] = got
        return got

    def _sampled(self, req: SimRequest, start: int, ids: list[int]) -> list[Position]:
        prev = req.output_token_ids[start - 1] if start else req.prompt_token_ids[-1]
        greedy = req.sampling.temperature == 0
        return positions(self._c, ids, prev, start, self.lp.top or 0, greedy)

    def prompt_fields(self, req: SimRequest) -> dict[str, Any]:
        """``prompt_logprobs`` and ``prompt_token_ids`` (per choice for completions, on
        the response for chat)."""
        return {
            "prompt_logprobs": (
                prompt_logprobs_json(self.tok, self._prompt(req))
                if self.lp.prompt is not None
                else None
            ),
            "prompt_token_ids": list(req.prompt_token_ids) if self.lp.token_ids else None,
        }

    def final(self, req: SimRequest) -> dict[str, Any]:
        """The fields of a non-streamed choice."""
        out: dict[str, Any] = {}
        ids = list(req.output_token_ids)
        if self.lp.token_ids:
            out["token_ids"] = ids
        if not self._chat:
            out.update(self.prompt_fields(req))
        if self.lp.top is not None:
            out["logprobs"] = self._logprobs(req, 0, ids, 0, self._echo)
        return out

    def delta(
        self, req: SimRequest, start: int, n: int, offset: int, first: bool
    ) -> dict[str, Any]:
        """The fields of one streamed chunk: ``n`` tokens from output index ``start``;
        ``offset`` is the text already sent (completions' ``text_offset``)."""
        ids = req.output_token_ids[start : start + n]
        out: dict[str, Any] = {}
        if self.lp.token_ids:
            out["token_ids"] = ids
            if first and not self._chat:
                out["prompt_token_ids"] = list(req.prompt_token_ids)
        if self.lp.top is not None:
            out["logprobs"] = self._logprobs(req, start, ids, offset, self._echo and first)
        return out

    def _logprobs(
        self, req: SimRequest, start: int, ids: list[int], offset: int, echo: bool
    ) -> dict[str, Any]:
        k = self.lp.top or 0
        pos: list[Position | None] = list(self._sampled(req, start, ids))
        if self._chat:
            return chat_content(self.tok, pos, k, self.lp.as_token_ids)  # type: ignore[arg-type]
        if echo:  # echo: the prompt's tokens (first one unscored) come first
            ids = [*req.prompt_token_ids, *ids]
            pos = [*self._prompt(req), *pos]
        return completion_logprobs(self.tok, ids, pos, k, offset, self.lp.as_token_ids)
