"""One simulated request: its tokens, its output plan and its lifecycle timestamps."""

from __future__ import annotations

import enum
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from gantry.protocol import block_hashes, salt_keys
from gantry.sim.parent import ParentRequest
from gantry.sim.tokenizer import Tokenizer

# Words the simulated model "writes": common English, so output looks like text.
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "one",
    "all",
    "we",
    "their",
    "been",
    "has",
    "would",
    "when",
    "will",
    "more",
    "if",
    "no",
    "out",
    "so",
    "said",
    "what",
    "up",
    "its",
    "about",
    "than",
    "into",
    "them",
    "can",
    "only",
    "other",
    "new",
    "some",
    "time",
    "could",
    "these",
    "two",
    "may",
    "then",
    "first",
    "any",
    "like",
    "now",
    "my",
    "such",
    "make",
    "over",
    "our",
    "even",
    "most",
    "me",
    "state",
    "after",
    "also",
    "made",
    "many",
    "did",
    "must",
    "before",
    "back",
    "see",
    "through",
    "way",
    "where",
    "get",
    "much",
    "go",
    "well",
    "your",
    "know",
    "should",
    "down",
    "work",
    "year",
    "because",
    "come",
    "people",
    "just",
    "say",
    "each",
    "those",
    "take",
    "day",
    "good",
    "how",
    "long",
    "very",
    "still",
    "own",
    "find",
    "here",
    "thing",
    "give",
    "many",
    "world",
    "life",
    "both",
    "last",
    "model",
    "engine",
    "token",
    "cache",
    "batch",
    "request",
    "latency",
    "stream",
    "gateway",
    "serve",
    "queue",
    "memory",
]


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class SamplingSpec:
    max_tokens: int
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    include_stop_str: bool = False
    seed: int | None = None
    temperature: float = 1.0
    natural_len: int = 0  # tokens until EOS; 0 means "draw one"
    forced_text: str | None = None  # a planned output (JSON mode, tool arguments)


@dataclass(slots=True)
class StepOutput:
    """What one step produced for one request."""

    text: str
    num_tokens: int
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass(eq=False, slots=True)
class SimRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingSpec
    tokenizer: Tokenizer
    arrival: float
    cache_salt: str | None = None
    index: int = 0
    lora: str | None = None  # the LoRA adapter's name (None: the base model)
    parent: ParentRequest | None = None  # shared by a request's n choices (n > 1)
    status: Status = Status.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_cached_prompt: int = -1  # prefix-cache hit at first scheduling (-1: not yet)
    num_external_prompt: int = 0  # of those, tokens whose KV came from a prefill engine (P/D)
    blocks: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    num_hashed_blocks_cached: int = 0
    text: str = ""
    sent_chars: int = 0
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    num_preemptions: int = 0
    not_before: int = 0  # first scheduler pass that may admit it (async scheduling)
    _plan: list[int] = field(default_factory=list)
    _rng: random.Random | None = None
    _eos_at: int = 0

    def __post_init__(self) -> None:
        s = self.sampling
        if s.seed is not None:
            material = f"seed:{s.seed}:{self.index}:{len(self.prompt_token_ids)}"
        elif s.temperature == 0:
            material = f"greedy:{self.index}"
        else:
            material = f"random:{random.getrandbits(64)}"
        digest = hashlib.blake2b(
            material.encode() + _token_bytes(self.prompt_token_ids), digest_size=8
        ).digest()
        self._rng = random.Random(int.from_bytes(digest, "little"))
        if s.forced_text is not None:
            self._plan = self.tokenizer.encode(s.forced_text, allow_special=False)
            self._eos_at = len(self._plan)
        elif s.ignore_eos:
            self._eos_at = -1
        else:
            self._eos_at = s.natural_len or _draw_natural_len(self._rng)
        self._eos_at = max(self._eos_at, s.min_tokens) if self._eos_at >= 0 else -1

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    def all_token_ids(self) -> list[int]:
        if not self.output_token_ids:
            return self.prompt_token_ids
        return self.prompt_token_ids + self.output_token_ids

    def update_hashes(self, block_size: int) -> None:
        if self.num_tokens // block_size > len(self.hashes):
            extra = salt_keys(self.cache_salt)
            if self.lora is not None:  # vLLM keys every block by the adapter; the chain
                extra = (self.lora, *(extra or ()))  # from the first block does the same
            self.hashes = block_hashes(self.all_token_ids(), block_size, extra, self.hashes)

    def _next_planned(self) -> int:
        n = len(self.output_token_ids)
        if self.sampling.forced_text is None:
            while len(self._plan) <= n:
                assert self._rng is not None
                word = self._rng.choice(WORDS)
                self._plan.extend(self.tokenizer.encode(" " + word, allow_special=False))
        return self._plan[n]

    def sample(self) -> StepOutput:
        """Produce the next token and decide whether the request is done."""
        n = len(self.output_token_ids)
        s = self.sampling
        if self._eos_at >= 0 and n >= self._eos_at:
            self.output_token_ids.append(self.tokenizer.eos_token_id)
            return self._finish("stop", None)
        tok = self._next_planned()
        self.output_token_ids.append(tok)
        self.text += self.tokenizer.token_text(tok)
        n += 1
        if s.stop and n >= s.min_tokens:
            window = self.text[-(len(self.tokenizer.token_text(tok)) + max(map(len, s.stop))) :]
            for stop in s.stop:
                pos = window.find(stop)
                if pos >= 0:
                    cut = len(self.text) - len(window) + pos
                    self.text = self.text[: cut + (len(stop) if s.include_stop_str else 0)]
                    return self._finish("stop", stop)
        if n >= s.max_tokens:
            return self._finish("length", None)
        if s.forced_text is not None and n >= len(self._plan):
            return self._finish("stop", None)
        return self._delta(None)

    def _finish(self, reason: str, stop_reason: str | int | None) -> StepOutput:
        self.finish_reason, self.stop_reason = reason, stop_reason
        self.status = Status.FINISHED
        return self._delta(reason, stop_reason)

    def _delta(self, reason: str | None, stop_reason: str | int | None = None) -> StepOutput:
        hold = 0
        if reason is None and self.sampling.stop:
            hold = max(map(len, self.sampling.stop)) - 1  # may be the start of a stop
        upto = max(self.sent_chars, len(self.text) - hold)
        text = self.text[self.sent_chars : upto]
        self.sent_chars = upto
        return StepOutput(text, 1, reason, stop_reason)

    def reset_for_recompute(self) -> None:
        """Preempted: drop computed KV; output so far becomes part of the prefill."""
        self.num_computed = 0
        self.num_hashed_blocks_cached = 0
        self.status = Status.WAITING
        self.num_preemptions += 1


def _draw_natural_len(rng: random.Random) -> int:
    # Chat answers: median ~180 tokens, long right tail, like ShareGPT outputs.
    return max(1, min(4096, int(rng.lognormvariate(5.2, 0.8))))


def _token_bytes(ids: list[int]) -> bytes:
    if len(ids) > 4096:
        ids = ids[:2048] + ids[-2048:]
    return b"".join(i.to_bytes(4, "little", signed=False) for i in ids if 0 <= i < 2**32)


def describe(req: SimRequest) -> dict[str, Any]:
    return {
        "id": req.request_id,
        "status": req.status.value,
        "prompt": req.num_prompt_tokens,
        "output": len(req.output_token_ids),
        "computed": req.num_computed,
    }
