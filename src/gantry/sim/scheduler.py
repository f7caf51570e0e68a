"""Continuous batching as vLLM's v1 scheduler does it.

Each step has a token budget (``max_num_batched_tokens``). Running requests are
scheduled first (one token each for decode, a chunk for prefill), then waiting
requests are admitted first-come-first-served while ``max_num_seqs``, the budget and
free KV blocks allow; with LoRA, a request whose adapter would make more than
``max_loras`` adapters in the batch is skipped (left waiting, in order). When a
running request cannot get a block, the most recently admitted running request is
preempted (its blocks freed, recomputed later).

With async scheduling (vLLM's default) the engine core chooses step k+1's batch as
soon as step k is launched, so a request that arrives while step k runs cannot join
step k+1: it waits for the pass after, one more step. When nothing is running the
engine is idle and a new request is scheduled at once.

Pure and synchronous: ``schedule()`` decides, ``complete()`` applies a finished step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from gantry.sim.kvcache import KVCache
from gantry.sim.latency import StepShape
from gantry.sim.lora import fits
from gantry.sim.sequence import SimRequest, Status, StepOutput


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 8192
    chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0
    max_loras: int = 0  # LoRA adapters in one batch (0: LoRA off)
    async_scheduling: bool = True  # next batch chosen while the current one runs


@dataclass(slots=True)
class ScheduledStep:
    items: list[tuple[SimRequest, int]] = field(default_factory=list)
    preempted: list[SimRequest] = field(default_factory=list)
    prefill_tokens: int = 0
    decode_tokens: int = 0
    cache_hit_tokens: int = 0
    cache_query_tokens: int = 0
    loras_loaded: int = 0  # adapters copied into a GPU slot for this step
    deferred: int = 0  # waiting requests skipped for the LoRA budget (vLLM's "deferred")

    @property
    def num_tokens(self) -> int:
        return self.prefill_tokens + self.decode_tokens

    def shape(self) -> StepShape:
        attn = 0.0
        kv = lora_tokens = 0
        loras = set()
        for req, n in self.items:
            ctx = req.num_computed + n
            attn += n * (req.num_computed + ctx) / 2
            kv += ctx
            if req.lora is not None:
                lora_tokens += n
                loras.add(req.lora)
        return StepShape(
            self.num_tokens, attn, kv, len(self.items), lora_tokens, len(loras), self.loras_loaded
        )

    def loras(self) -> list[str]:
        return list(dict.fromkeys(r.lora for r, _ in self.items if r.lora is not None))


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCache) -> None:
        self.config = config
        self.kv = kv
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self._passes = 0  # schedule() calls so far

    def add(self, req: SimRequest) -> None:
        if self.config.async_scheduling and self.running:
            # Arrived while step ``_passes`` runs; the next batch is already chosen.
            req.not_before = self._passes + 2
        self.waiting.append(req)

    def abort(self, req: SimRequest) -> bool:
        if req.status is Status.FINISHED:
            return False
        if req in self.running:
            self.running.remove(req)
        else:
            try:
                self.waiting.remove(req)
            except ValueError:
                return False
        self.kv.free(req.blocks)
        req.status = Status.FINISHED
        req.finish_reason = "abort"
        return True

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledStep:
        self._passes += 1
        step = ScheduledStep()
        budget = self.config.max_num_batched_tokens
        cap = self.config.long_prefill_token_threshold
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed, budget)
            if cap and n > 1:
                n = min(n, cap)
            while not self.kv.allocate(req.blocks, [], req.num_computed + n):
                victim = self.running.pop()
                self._preempt(victim, step)
                if victim is req:
                    n = 0
                    break
            if n == 0:
                break
            self._take(step, req, n)
            budget -= n
            i += 1
        if not step.preempted:
            budget = self._admit(step, budget)
        return step

    def _admit(self, step: ScheduledStep, budget: int) -> int:
        cfg = self.config
        loras = {r.lora for r in self.running if r.lora is not None}
        skipped: list[SimRequest] = []  # their adapter would exceed max_loras: left waiting
        idle = not self.running  # no step in flight: nothing was chosen ahead
        while self.waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
            req = self.waiting[0]
            if req.not_before > self._passes and not idle:
                break  # first-come-first-served: the ones behind it arrived later
            if cfg.max_loras and not fits(loras, req.lora, cfg.max_loras):
                skipped.append(self.waiting.popleft())
                continue
            req.update_hashes(self.kv.block_size)
            hit = self.kv.lookup(req.hashes, req.num_tokens)
            cached = len(hit) * self.kv.block_size
            n = req.num_tokens - cached
            if not cfg.chunked_prefill and n > budget:
                break
            n = min(n, budget)
            if cfg.long_prefill_token_threshold:
                n = min(n, cfg.long_prefill_token_threshold)
            # vLLM reserves the whole input at admission (scheduler_reserve_full_isl).
            if not self.kv.can_allocate(0, hit, req.num_tokens):
                break
            self.kv.allocate(req.blocks, hit, cached + n)
            self.waiting.popleft()
            req.num_computed = cached
            req.num_hashed_blocks_cached = len(hit)
            req.status = Status.RUNNING
            if req.num_cached_prompt < 0:
                req.num_cached_prompt = cached
                step.cache_query_tokens += req.num_prompt_tokens
                step.cache_hit_tokens += cached
            self.running.append(req)
            if req.lora is not None:
                loras.add(req.lora)
            self._take(step, req, n)
            budget -= n
        self.waiting.extendleft(reversed(skipped))
        step.deferred = len(skipped)
        return budget

    def _take(self, step: ScheduledStep, req: SimRequest, n: int) -> None:
        step.items.append((req, n))
        if req.num_computed + n > req.num_tokens - 1 and n == 1 and req.output_token_ids:
            step.decode_tokens += 1
        else:
            step.prefill_tokens += n

    def _preempt(self, req: SimRequest, step: ScheduledStep) -> None:
        self.kv.free(req.blocks)
        req.reset_for_recompute()
        self.waiting.appendleft(req)
        step.preempted.append(req)

    def complete(self, step: ScheduledStep) -> list[tuple[SimRequest, StepOutput]]:
        """Apply a step: advance computed tokens, sample where a request caught up."""
        out: list[tuple[SimRequest, StepOutput]] = []
        bs = self.kv.block_size
        finished = False
        for req, n in step.items:
            if req.status is not Status.RUNNING:
                continue  # aborted while the step ran
            req.num_computed += n
            if req.num_computed < req.num_tokens:
                self._cache_blocks(req, bs)
                continue
            res = req.sample()
            self._cache_blocks(req, bs)
            out.append((req, res))
            if res.finish_reason is not None:
                finished = True
        if finished:
            for req, res in out:
                if res.finish_reason is not None and req in self.running:
                    self.running.remove(req)
                    self.kv.free(req.blocks)
        return out

    def _cache_blocks(self, req: SimRequest, bs: int) -> None:
        if req.num_computed // bs > req.num_hashed_blocks_cached:
            req.update_hashes(bs)
            full = min(len(req.hashes), req.num_computed // bs)
            req.num_hashed_blocks_cached = self.kv.cache_full_blocks(
                req.blocks,
                req.hashes[:full],
                req.num_hashed_blocks_cached,
                req.all_token_ids(),
                salt=req.cache_salt,
            )
