"""Restart policy, as pure functions over plain data: exponential backoff, crash-loop
detection, and what to change after an engine ran out of GPU memory.

Backoff follows Kubernetes' CrashLoopBackOff: the delay doubles with each consecutive
failure up to a ceiling and resets once an engine has stayed up for ``stable_after_s``;
``crash_loop_restarts`` failures inside ``crash_loop_window_s`` mark the engine
degraded (it is still retried, at the ceiling). An out-of-memory failure is recognised
in the engine's log and answered with smaller arguments, within bounds, never touching
an argument the user set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import Enum

from gantry.supervisor.args import EngineArgs
from gantry.supervisor.config import OomSettings, RestartSettings


@dataclass(frozen=True, slots=True)
class RestartConfig:
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    backoff_factor: float = 2.0
    crash_loop_restarts: int = 5
    crash_loop_window_s: float = 300.0
    stable_after_s: float = 120.0


@dataclass(frozen=True, slots=True)
class RestartState:
    consecutive: int = 0  # failures since the engine last stayed up stable_after_s
    recent: tuple[float, ...] = ()  # failure times inside the window, at most crash_loop_restarts

    def __repr__(self) -> str:
        return f"RestartState(consecutive={self.consecutive}, recent={len(self.recent)})"


@dataclass(frozen=True, slots=True)
class RestartDecision:
    delay_s: float
    crash_loop: bool


def on_failure(
    state: RestartState, cfg: RestartConfig, *, now: float, ran_for: float
) -> tuple[RestartState, RestartDecision]:
    """An engine exited unasked (or never became ready) after ``ran_for`` seconds."""
    consecutive = 1 if ran_for >= cfg.stable_after_s else state.consecutive + 1
    recent = (*(t for t in state.recent if now - t < cfg.crash_loop_window_s), now)
    recent = recent[-cfg.crash_loop_restarts :]
    delay = min(cfg.backoff_max_s, cfg.backoff_initial_s * cfg.backoff_factor ** (consecutive - 1))
    crash_loop = len(recent) >= cfg.crash_loop_restarts
    return RestartState(consecutive, recent), RestartDecision(delay, crash_loop)


class OomKind(Enum):
    CUDA = "cuda_out_of_memory"  # an allocation outside vLLM's budget failed
    NO_KV_MEMORY = "no_kv_cache_memory"  # weights + activations leave nothing for KV
    CONTEXT = "context_does_not_fit"  # KV holds less than one max_model_len sequence


@dataclass(frozen=True, slots=True)
class Oom:
    kind: OomKind
    estimate: int | None = None  # vLLM's "estimated maximum model length"


_CUDA_OOM = ("torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError", "CUDA out of memory")
_NO_KV = "No available memory for the cache blocks"
_ESTIMATE = re.compile(r"estimated maximum model length is (\d+)")


def classify_line(line: str) -> Oom | None:
    """The out-of-memory signature a log line carries, if any."""
    if any(s in line for s in _CUDA_OOM):
        return Oom(OomKind.CUDA)
    if _NO_KV in line:
        return Oom(OomKind.NO_KV_MEMORY)
    m = _ESTIMATE.search(line)
    if m:
        return Oom(OomKind.CONTEXT, int(m[1]))
    return None


@dataclass(frozen=True, slots=True)
class OomBounds:
    utilization_step: float = 0.05
    utilization_floor: float = 0.50
    seqs_floor: int = 8
    batched_floor: int = 512
    model_len_floor: int = 256


@dataclass(frozen=True, slots=True)
class OomDecision:
    args: EngineArgs | None  # None: nothing left to lower, stop adapting
    message: str


def after_oom(
    args: EngineArgs, oom: Oom, pinned: frozenset[str], bounds: OomBounds = OomBounds()
) -> OomDecision:
    """Smaller arguments after ``oom``, within ``bounds``; ``pinned`` ones stay."""
    new = args
    free = lambda key: key not in pinned  # noqa: E731
    if oom.kind is OomKind.CONTEXT and oom.estimate is not None:
        length = oom.estimate // 256 * 256
        if free("max_model_len") and bounds.model_len_floor <= length < args.max_model_len:
            new = replace(new, max_model_len=length)
    else:
        util = round(args.gpu_memory_utilization - bounds.utilization_step, 2)
        lower_util = oom.kind is OomKind.CUDA and util >= bounds.utilization_floor
        if lower_util and free("gpu_memory_utilization"):
            new = replace(new, gpu_memory_utilization=util)
        seqs = max(bounds.seqs_floor, args.max_num_seqs // 2)
        if free("max_num_seqs") and seqs < args.max_num_seqs:
            new = replace(new, max_num_seqs=seqs)
        batched = max(bounds.batched_floor, new.max_num_seqs, args.max_num_batched_tokens // 2)
        lower_batch = oom.kind is OomKind.NO_KV_MEMORY and args.enable_chunked_prefill
        if lower_batch and free("max_num_batched_tokens") and batched < new.max_num_batched_tokens:
            new = replace(new, max_num_batched_tokens=batched)
    said = [
        f"--{k.replace('_', '-')} {_fmt(getattr(args, k))} → {_fmt(getattr(new, k))}"
        for k in _LOWERED
        if getattr(args, k) != getattr(new, k)
    ]
    if not said:
        return OomDecision(None, f"{oom.kind.value}: nothing left to lower within bounds")
    return OomDecision(new, f"{oom.kind.value}: restarting with {', '.join(said)}")


_LOWERED = ("gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens", "max_model_len")


def restart_config(s: RestartSettings) -> RestartConfig:
    return RestartConfig(
        backoff_initial_s=s.backoff_initial_s,
        backoff_max_s=s.backoff_max_s,
        crash_loop_restarts=s.crash_loop_restarts,
        crash_loop_window_s=s.crash_loop_window_s,
        stable_after_s=s.stable_after_s,
    )


def oom_bounds(s: OomSettings) -> OomBounds:
    return OomBounds(s.utilization_step, s.utilization_floor, s.seqs_floor)


def _fmt(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


__all__ = [
    "Oom",
    "OomBounds",
    "OomDecision",
    "OomKind",
    "RestartConfig",
    "RestartDecision",
    "RestartState",
    "after_oom",
    "classify_line",
    "on_failure",
    "oom_bounds",
    "restart_config",
]
