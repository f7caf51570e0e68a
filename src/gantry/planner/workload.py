"""A workload for virtual time: token ids per request and when requests arrive.

Requests are ``gantry bench`` jobs (its synthetic ``random`` lengths or a dataset),
tokenized as the simulator tokenizes what ``gantry bench`` sends (chat: the ChatML
template over the system prompt and the user turn; completions: the text), so a
virtual run and ``gantry bench`` against ``gantry sim`` see the same prompts. Arrival
times are ``gantry bench``'s (``send_times``: gamma gaps, Poisson by default, seeded);
the same seed at another rate gives the same gaps scaled, so runs at different rates
are comparable.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gantry.bench.arrivals import Schedule, send_times
from gantry.bench.datasets import DatasetError, Job, random_jobs
from gantry.errors import ConfigError
from gantry.sim.tokenizer import BuiltinTokenizer, render_chat
from gantry.sim.virtual import Arrival

MAX_REQUESTS = 20_000  # requests per workload (token ids are kept per request)


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    prompts: tuple[list[int], ...]
    outputs: tuple[int, ...]
    burstiness: float = 1.0
    seed: int = 0
    jobs: tuple[Job, ...] = ()  # as gantry bench sends them (real engines)
    chat: bool = True

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def mean_input(self) -> float:
        return sum(map(len, self.prompts)) / len(self.prompts)

    @property
    def mean_output(self) -> float:
        return sum(self.outputs) / len(self.outputs)

    @property
    def longest(self) -> int:
        """The longest request, prompt plus output, in tokens."""
        return max(len(p) + o for p, o in zip(self.prompts, self.outputs, strict=True))

    def arrivals(self, rate: float) -> Iterator[Arrival]:
        """Every request at ``rate`` requests/s (``inf``: all at once)."""
        times = send_times(Schedule(rate, self.burstiness, seed=self.seed), len(self.prompts))
        for t, p, o in zip(times, self.prompts, self.outputs, strict=False):
            yield Arrival(t, p, o)

    def spaced(self, count: int, gap: float) -> Iterator[Arrival]:
        """The first ``count`` requests one at a time, ``gap`` seconds apart."""
        for i in range(min(count, len(self.prompts))):
            yield Arrival(i * gap, self.prompts[i], self.outputs[i])


def from_jobs(
    jobs: Sequence[Job], name: str, *, chat: bool = True, burstiness: float = 1.0, seed: int = 0
) -> Workload:
    """Tokenize ``gantry bench`` jobs (one turn each) as the simulator would."""
    if not jobs:
        raise ConfigError("the workload has no requests")
    if len(jobs) > MAX_REQUESTS:
        raise ConfigError(f"at most {MAX_REQUESTS} requests per workload, not {len(jobs)}")
    if burstiness <= 0 or not math.isfinite(burstiness):
        raise ConfigError("--burstiness must be a positive number")
    tok = BuiltinTokenizer()
    prompts, outputs = [], []
    for job in jobs:
        if len(job.turns) != 1:
            raise ConfigError("multi-turn workloads are not simulated in virtual time")
        turn = job.turns[0]
        if turn.messages is not None:
            ids = tok.encode(render_chat(list(turn.messages)))
        elif chat:
            msgs: list[dict[str, object]] = []
            if job.system:
                msgs.append({"role": "system", "content": job.system})
            ids = tok.encode(render_chat([*msgs, {"role": "user", "content": turn.text}]))
        else:
            ids = tok.encode((f"{job.system}\n" if job.system else "") + turn.text)
        prompts.append(ids)
        outputs.append(turn.output_len)
    return Workload(name, tuple(prompts), tuple(outputs), burstiness, seed, tuple(jobs), chat)


def synthetic(
    num: int, input_tokens: int, output_tokens: int, *, chat: bool = True, seed: int = 0
) -> Workload:
    """``gantry bench --dataset random`` with these lengths."""
    try:
        jobs = random_jobs(num, input_tokens, output_tokens, seed=seed)
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None
    name = f"random {input_tokens} in / {output_tokens} out"
    return from_jobs(jobs, name, chat=chat, seed=seed)


__all__ = ["MAX_REQUESTS", "Workload", "from_jobs", "synthetic"]
