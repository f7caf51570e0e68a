"""Benchmark workloads: seeded and reproducible.

A ``Job`` is one request, or a conversation whose turns are sent one after another
(each turn carries the history, including the server's real replies).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Short, common words: about one token each for BPE vocabularies and for the
# simulator's built-in tokenizer, so a prompt of N words is about N tokens.
_WORDS = tuple(
    "the of and to in is it you he was for on are as his at be or one had by but not all "
    "we can her out an do how if up so him has two go see way no may day its did get use "
    "man new now old any say she too own why let put end men set try ask big few far run "
    "own off yes yet got".split()
)


class DatasetError(ValueError):
    """The dataset file or options are not what they claim (one-line message)."""


@dataclass(frozen=True, slots=True)
class Turn:
    text: str
    output_len: int
    messages: tuple[dict[str, Any], ...] | None = None  # a JSONL chat request as given


@dataclass(frozen=True, slots=True)
class Job:
    turns: tuple[Turn, ...]
    session: str | None = None
    system: str | None = None  # shared prefix (system prompt for chat)


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(max(1, n)))


def _length(rng: random.Random, mean: int, ratio: float) -> int:
    lo, hi = int(mean * (1 - ratio)), int(mean * (1 + ratio))
    return max(1, rng.randint(lo, hi) if hi > lo else mean)


def random_jobs(
    num: int,
    input_len: int,
    output_len: int,
    *,
    range_ratio: float = 0.0,
    prefix_len: int = 0,
    seed: int = 0,
) -> list[Job]:
    if input_len < 1 or output_len < 1:
        raise DatasetError("random dataset lengths must be at least 1")
    if not 0 <= range_ratio < 1:
        raise DatasetError("--range-ratio must be in [0, 1)")
    rng = random.Random(seed)
    prefix = words(rng, prefix_len) if prefix_len else None
    return [
        Job(
            (
                Turn(
                    words(rng, _length(rng, input_len, range_ratio)),
                    _length(rng, output_len, range_ratio),
                ),
            ),
            system=prefix,
        )
        for _ in range(num)
    ]


def shared_prefix_jobs(
    num_prefixes: int,
    per_prefix: int,
    prefix_len: int,
    suffix_len: int,
    output_len: int,
    *,
    seed: int = 0,
) -> list[Job]:
    """N shared prefixes (system prompts, RAG context) x M distinct questions each."""
    if num_prefixes < 1 or per_prefix < 1:
        raise DatasetError("shared-prefix needs at least one prefix and one suffix")
    rng = random.Random(seed)
    prefixes = [f"context {i}: " + words(rng, prefix_len) for i in range(num_prefixes)]
    jobs = [
        Job((Turn(words(rng, suffix_len), output_len),), system=p)
        for p in prefixes
        for _ in range(per_prefix)
    ]
    rng.shuffle(jobs)
    return jobs


def multi_turn_jobs(
    sessions: int, turns: int, turn_len: int, output_len: int, *, seed: int = 0
) -> list[Job]:
    if sessions < 1 or turns < 1:
        raise DatasetError("multi-turn needs at least one session and one turn")
    rng = random.Random(seed)
    return [
        Job(
            tuple(Turn(words(rng, turn_len), output_len) for _ in range(turns)),
            session=f"session-{seed}-{i}",
        )
        for i in range(sessions)
    ]


def _approx_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def sharegpt_jobs(
    path: str | Path, num: int, *, seed: int = 0, output_len: int | None = None
) -> list[Job]:
    """ShareGPT format; filtered like `vllm bench serve` (prompt and output >= 4 tokens,
    prompt <= 1024, prompt + output <= 2048; tokens estimated at 4 characters)."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: a ShareGPT file is a JSON list of conversations")
    rng = random.Random(seed)
    order = list(range(len(data)))
    rng.shuffle(order)
    jobs: list[Job] = []
    for i in order:
        conv = data[i].get("conversations") if isinstance(data[i], dict) else None
        if not isinstance(conv, list) or len(conv) < 2:
            continue
        prompt, reply = conv[0].get("value"), conv[1].get("value")
        if not isinstance(prompt, str) or not isinstance(reply, str):
            continue
        p, o = _approx_tokens(prompt), output_len or _approx_tokens(reply)
        if p < 4 or o < 4 or p > 1024 or p + o > 2048:
            continue
        jobs.append(Job((Turn(prompt, o),)))
        if len(jobs) >= num:
            break
    if not jobs:
        raise DatasetError(f"{path}: no usable conversations (expected ShareGPT format)")
    return jobs


def jsonl_jobs(path: str | Path, num: int, *, output_len: int = 128) -> list[Job]:
    """One request per line: {"prompt": ..., "max_tokens"?: N} or {"messages": [...]}."""
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read {p}: {exc.strerror}") from None
    jobs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise DatasetError(f"{p} line {n}: not valid JSON") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{p} line {n}: expected an object with 'prompt' or 'messages'")
        out = int(row.get("max_tokens") or output_len)
        if isinstance(row.get("prompt"), str):
            jobs.append(Job((Turn(row["prompt"], out),)))
        elif isinstance(row.get("messages"), list):
            jobs.append(Job((Turn("", out, tuple(row["messages"])),)))
        else:
            raise DatasetError(f"{p} line {n}: expected an object with 'prompt' or 'messages'")
        if len(jobs) >= num:
            break
    if not jobs:
        raise DatasetError(f"{p}: no requests in the file")
    return jobs


def _load_json(path: str | Path) -> Any:
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except OSError as exc:
        raise DatasetError(f"cannot read {p}: {exc.strerror}") from None
    except ValueError:
        raise DatasetError(f"{p}: not valid JSON") from None
