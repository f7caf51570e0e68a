"""Simulated log-probabilities, in vLLM 0.33's request checks and response shapes.

The values are made up but consistent: every logprob is ≤ 0, the probabilities of one
position's candidates sum to less than 1, ranks agree with the values, and at
temperature 0 the chosen token is the most likely one (rank 1). They depend only on the
position, the token and its predecessor, so a greedy answer has the same logprobs on
every run.

Each position is a list of ``(token_id, logprob, rank)`` in vLLM's dict order: the
chosen (or prompt) token first, then the top-k by rank without repeating it
(``vllm/v1/engine/logprobs.py``: ``_make_logprob_dict`` over ``[sampled, *topk]``).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any

from gantry.sim.sequence import WORDS
from gantry.sim.tokenizer import Tokenizer

Position = list[tuple[int, float, int]]
_FLOOR = -9999.0  # vLLM clamps -inf to OpenAI's JSON-safe floor
_MAX_RETURNED = 20  # -1 ("the whole vocabulary") is answered with this many: bounded


@dataclass(frozen=True, slots=True)
class LogprobRequest:
    """What a request asked for: sample and prompt logprobs, token ids."""

    top: int | None = None  # logprobs per generated token (None: off)
    prompt: int | None = None  # prompt_logprobs (None: off)
    token_ids: bool = False  # return_token_ids
    as_token_ids: bool = False  # return_tokens_as_token_ids

    @property
    def any(self) -> bool:
        return self.top is not None or self.prompt is not None or self.token_ids


def _int_field(body: dict[str, Any], key: str) -> int | None:
    from gantry.sim.validate import schema_error

    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise schema_error(key, "Input should be a valid integer", v)
    return v


def parse_logprobs(body: dict[str, Any], *, chat: bool) -> LogprobRequest:
    """The request's logprob fields, with ``check_logprobs``' errors (the chat and
    completion ``protocol.py`` model validators)."""
    from gantry.sim.validate import invalid

    prompt = _int_field(body, "prompt_logprobs")
    if prompt is not None:
        if body.get("stream") and (prompt > 0 or prompt == -1):
            raise invalid(
                "`prompt_logprobs` are not available when `stream=True`.", "prompt_logprobs"
            )
        if prompt < 0 and prompt != -1:
            raise invalid(
                "`prompt_logprobs` must be a positive value or -1.", "prompt_logprobs", prompt
            )
    if chat:
        top = _int_field(body, "top_logprobs")
        wanted = body.get("logprobs")
        if top is not None:
            if top < 0 and top != -1:
                raise invalid("`top_logprobs` must be a positive value or -1.", "top_logprobs", top)
            if (top == -1 or top > 0) and not wanted:
                raise invalid(
                    "when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs"
                )
        sample = (top or 0) if wanted else None
    else:
        sample = _int_field(body, "logprobs")
        if sample is not None and sample < 0:
            raise invalid("`logprobs` must be a positive value.", "logprobs", sample)
        if prompt is None and body.get("echo"):
            prompt = sample  # CompletionRequest.to_sampling_params: echo scores the prompt
    return LogprobRequest(
        top=sample,
        prompt=prompt,
        token_ids=bool(body.get("return_token_ids")),
        as_token_ids=bool(body.get("return_tokens_as_token_ids")),
    )


def check_max(req: LogprobRequest, max_logprobs: int, vocab_size: int) -> None:
    """``_validate_logprobs`` (vllm/v1/engine/input_processor.py): at most
    ``--max-logprobs`` (-1: the vocabulary), -1 asking for the whole vocabulary."""
    from gantry.sim.validate import invalid

    limit = vocab_size if max_logprobs == -1 else max_logprobs
    for kind, param, n in (
        ("sample", "logprobs", req.top),
        ("prompt", "prompt_logprobs", req.prompt),
    ):
        if not n:
            continue
        n = vocab_size if n == -1 else n
        if n > limit:
            raise invalid(
                f"Requested {kind} logprobs of {n}, which is greater than max allowed: {limit}",
                param,
                n,
            )


class Candidates:
    """Plausible alternative tokens (common words) and the values of each position."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        pool: list[int] = []
        for w in WORDS:
            ids = tok.encode(" " + w, allow_special=False)
            if len(ids) == 1 and ids[0] not in pool:
                pool.append(ids[0])
        self.pool = pool or list(range(min(tok.vocab_size, 64)))

    def _others(self, rng: random.Random, exclude: int, n: int) -> list[int]:
        picks = [t for t in rng.sample(self.pool, min(len(self.pool), n + 1)) if t != exclude]
        while len(picks) < n:  # a tiny pool: fall back to arbitrary ids
            t = rng.randrange(self.tok.vocab_size)
            if t != exclude and t not in picks:
                picks.append(t)
        return picks[:n]

    def sampled(self, token: int, prev: int, pos: int, k: int, greedy: bool) -> Position:
        """The chosen token and the top-``k`` at one generated position."""
        rng = _rng("s", token, prev, pos)
        rank = 1 if greedy or rng.random() < 0.8 else rng.choice((2, 3))
        lps = _descending(rng, max(k, rank))
        others = iter(self._others(rng, token, max(k, rank)))
        ranked = [token if r == rank else next(others) for r in range(1, max(k, rank) + 1)]
        return _dict_order(token, lps[rank - 1], rank, ranked, lps, k)

    def prompt(self, token: int, prev: int, pos: int, k: int) -> Position:
        """A prompt token (scored, usually not the model's first choice) and the top-k."""
        rng = _rng("p", token, prev, pos)
        rank = 1 + int(rng.lognormvariate(1.0, 1.3))
        lps = _descending(rng, k)
        others = self._others(rng, token, k)
        if rank <= k:
            others[rank - 1] = token
            lp = lps[rank - 1]
        else:
            lp = (lps[-1] if lps else -0.7) - rng.uniform(0.1, 4.0) - 0.05 * rank
        return _dict_order(token, lp, rank, others, lps, k)


def _rng(*parts: object) -> random.Random:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def _descending(rng: random.Random, n: int) -> list[float]:
    """n log-probabilities, strictly descending, whose probabilities sum below 1."""
    top = rng.uniform(0.5, 0.99)
    rest, ratio = 1.0 - top, rng.uniform(0.3, 0.7)
    probs = [top] + [rest * (1 - ratio) * ratio ** (i - 1) for i in range(1, n)]
    return [max(math.log(p), _FLOOR) for p in probs]


def _dict_order(
    token: int, lp: float, rank: int, ranked: list[int], lps: list[float], k: int
) -> Position:
    out = [(token, lp, rank)]
    out.extend((t, lps[i], i + 1) for i, t in enumerate(ranked[:k]) if t != token)
    return out


def positions(
    c: Candidates, tokens: list[int], prev: int, start: int, k: int, greedy: bool
) -> list[Position]:
    """Sample logprobs for generated ``tokens``; ``prev`` precedes the first of them,
    ``start`` is the first one's index in the output."""
    k = min(k, _MAX_RETURNED) if k >= 0 else _MAX_RETURNED
    out = []
    for i, t in enumerate(tokens):
        out.append(c.sampled(t, prev, start + i, k, greedy))
        prev = t
    return out


def prompt_positions(c: Candidates, prompt: list[int], k: int) -> list[Position | None]:
    """Prompt logprobs: none for the first token, then each token given its prefix."""
    k = min(k, _MAX_RETURNED) if k >= 0 else _MAX_RETURNED
    out: list[Position | None] = [None]
    out.extend(c.prompt(t, prompt[i], i + 1, k) for i, t in enumerate(prompt[1:]))
    return out


def _text(tok: Tokenizer, token: int, as_ids: bool) -> str:
    return f"token_id:{token}" if as_ids else tok.token_text(token)


def chat_content(
    tok: Tokenizer, pos: list[Position], k: int, as_ids: bool = False
) -> dict[str, Any]:
    """``_create_chat_logprobs`` / ``_get_top_logprobs`` (chat_completion/serving.py):
    ``{"content": [{token, logprob, bytes, top_logprobs: first k of the dict}]}``."""
    content = []
    for p in pos:
        token, lp, _ = p[0]
        text = _text(tok, token, as_ids)
        content.append(
            {
                "token": text,
                "logprob": lp,
                "bytes": list(text.encode("utf-8", errors="replace")),
                "top_logprobs": [
                    {"token": (s := _text(tok, t, as_ids)), "logprob": v, "bytes": list(s.encode())}
                    for i, (t, v, _) in enumerate(p)
                    if k == -1 or i < k
                ],
            }
        )
    return {"content": content}


def completion_logprobs(
    tok: Tokenizer,
    ids: list[int],
    pos: list[Position | None],
    k: int,
    offset: int = 0,
    as_ids: bool = False,
) -> dict[str, Any]:
    """``_create_completion_logprobs`` (completion/serving.py): tokens, token_logprobs,
    top_logprobs (the dict's first k + 1 entries) and text offsets."""
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    last = 0
    for token, p in zip(ids, pos, strict=True):
        text = _text(tok, token, as_ids)
        tokens.append(text)
        if p is None:
            values.append(None)
            tops.append(None)
        else:
            values.append(p[0][1])
            tops.append({_text(tok, t, as_ids): v for i, (t, v, _) in enumerate(p) if k >= i})
        offsets.append(offset if not offsets else offsets[-1] + last)
        last = len(text)
    return {
        "text_offset": offsets,
        "token_logprobs": values,
        "tokens": tokens,
        "top_logprobs": tops,
    }


def prompt_logprobs_json(tok: Tokenizer, pos: list[Position | None]) -> list[Any]:
    """``prompt_logprobs`` as vLLM dumps ``dict[int, Logprob]``: ids as keys, each
    ``{"logprob", "rank", "decoded_token"}``."""
    return [
        None
        if p is None
        else {
            str(t): {"logprob": v, "rank": r, "decoded_token": tok.token_text(t)} for t, v, r in p
        }
        for p in pos
    ]
