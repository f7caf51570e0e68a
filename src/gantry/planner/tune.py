"""``gantry tune``: the engine arguments that carry the most load within an SLO.

Coordinate search from the supervisor's derived arguments: for each argument in
``SPACE`` in turn, every value is tried with the others at the best so far, and a
value is kept when it raises the per-replica capacity (``capacity.py``) by more than
``MIN_GAIN``. Each configuration is measured once (memoised); at most ``max_trials``
are measured. Configurations that do not fit (more memory than the GPU has, a context
a step cannot hold without chunked prefill) are listed with the reason.

How a configuration is measured is an ``Evaluator``: ``VirtualEvaluator`` runs the
simulator in virtual time; ``gantry.planner.real.EngineEvaluator`` starts engines
through the supervisor and drives them with ``gantry bench`` (it needs GPUs and vLLM).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gantry.errors import ConfigError, ImpossibleSlo
from gantry.planner.capacity import Capacity, find_capacity
from gantry.planner.engine import plan_engine
from gantry.planner.slo import Target
from gantry.planner.workload import Workload
from gantry.sim.profiles import GPUProfile
from gantry.supervisor.cmdline import UserArgs
from gantry.supervisor.model import ModelInfo

SPACE: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("max_num_seqs", (16, 32, 64, 128, 256, 512, 1024)),
    ("max_num_batched_tokens", (512, 1024, 2048, 4096, 8192, 16384)),
    ("enable_chunked_prefill", (True, False)),
    ("gpu_memory_utilization", (0.80, 0.85, 0.90, 0.95)),
    ("enable_prefix_caching", (True, False)),
)
KEYS = tuple(k for k, _ in SPACE)
MIN_GAIN = 0.03  # a change must raise capacity by more than this (the search's precision)
PRECISION = 0.02  # of the saturated rate: the capacity search's bracket


@dataclass(frozen=True, slots=True)
class Trial:
    """One configuration and what it carried."""

    index: int
    requested: dict[str, Any]  # the tuned arguments, all of them, as tried
    args: dict[str, Any]  # as the engine got them (without chunked prefill a step
    # holds a whole context, so --max-num-batched-tokens is raised to --max-model-len)
    capacity: Capacity | None = None
    vllm_serve: str = ""
    reason: str = ""  # why it could not be measured, or why no rate met the SLO

    @property
    def rate(self) -> float:
        return self.capacity.rate if self.capacity else 0.0


class Evaluator(Protocol):
    """Measures one configuration's per-replica capacity within the SLO."""

    def derived(self) -> dict[str, Any]:
        """The starting point: the arguments the supervisor derives."""

    def evaluate(self, args: dict[str, Any]) -> tuple[Capacity, str, dict[str, Any]]:
        """(capacity, the ``vllm serve`` line, the arguments the engine got);
        ``ConfigError`` when it cannot run."""


@dataclass(frozen=True, slots=True)
class VirtualEvaluator:
    model: ModelInfo
    gpu: GPUProfile
    tp: int
    workload: Workload
    slo: tuple[Target, ...]

    def derived(self) -> dict[str, Any]:
        args = plan_engine(self.model, self.gpu, self.tp).args
        return {k: getattr(args, k) for k in KEYS}

    def evaluate(self, args: dict[str, Any]) -> tuple[Capacity, str, dict[str, Any]]:
        user = UserArgs({**args, "max_model_len": context_for(self.workload, self.model)})
        engine = plan_engine(self.model, self.gpu, self.tp, user)
        cap = find_capacity(engine.resolved, self.workload, self.slo, precision=PRECISION)
        return cap, engine.vllm_serve(), {k: getattr(engine.args, k) for k in KEYS}


def context_for(workload: Workload, model: ModelInfo) -> int:
    """``--max-model-len`` while tuning: what the workload needs, in multiples of 1024
    (a model's full context would make every step without chunked prefill hold it)."""
    need = -(-workload.longest // 1024) * 1024
    if need > model.max_positions:
        raise ConfigError(
            f"requests of up to {workload.longest} tokens exceed {model.name}'s "
            f"{model.max_positions}-token context"
        )
    return max(need, min(2048, model.max_positions))


@dataclass(slots=True)
class Tuning:
    trials: list[Trial] = field(default_factory=list)
    best: Trial | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "best": _trial_dict(self.best) if self.best else None,
            "trials": [_trial_dict(t) for t in self.trials],
        }


def _trial_dict(t: Trial) -> dict[str, Any]:
    out: dict[str, Any] = {"trial": t.index, "args": t.args, "capacity_rps": t.rate}
    if t.requested != t.args:
        out["requested"] = t.requested
    c = t.capacity
    if c is not None and c.at_rate is not None:
        out["output_tokens_per_s"] = c.at_rate.output_tps
        out["at_capacity_ms"] = {k: v * 1000 for k, v in c.at_rate.values.items()}
    if t.vllm_serve:
        out["vllm_serve"] = t.vllm_serve
    if t.reason:
        out["reason"] = t.reason
    return out


def tune(
    evaluator: Evaluator,
    *,
    max_trials: int = 30,
    on_trial: Callable[[Trial], None] | None = None,
) -> Tuning:
    """Coordinate search; ``ImpossibleSlo`` if even the derived arguments cannot meet
    the SLO with one request at a time and nothing tried does better."""
    result = Tuning()
    seen: dict[tuple[Any, ...], Trial] = {}

    def trial(args: dict[str, Any]) -> Trial:
        key = tuple(args[k] for k in KEYS)
        if key in seen:
            return seen[key]
        try:
            cap, line, effective = evaluator.evaluate(args)
            t = Trial(len(result.trials) + 1, dict(args), effective, cap, line)
        except ConfigError as exc:  # DoesNotFit and ImpossibleSlo among them
            t = Trial(len(result.trials) + 1, dict(args), dict(args), reason=str(exc))
        seen[key] = t
        result.trials.append(t)
        if on_trial is not None:
            on_trial(t)
        return t

    best = trial(evaluator.derived())
    for key, values in SPACE:
        for value in values:
            if len(result.trials) >= max_trials:
                break
            if value == best.requested[key]:
                continue
            t = trial({**best.requested, key: value})
            if t.rate > best.rate * (1 + MIN_GAIN):
                best = t
    if best.rate <= 0:
        reasons = [t.reason for t in result.trials if "no rate meets" in t.reason]
        raise ImpossibleSlo(reasons[0] if reasons else best.reason or "no configuration fits")
    result.best = best
    return result


__all__ = [
    "KEYS",
    "MIN_GAIN",
    "PRECISION",
    "SPACE",
    "Evaluator",
    "Trial",
    "Tuning",
    "VirtualEvaluator",
    "context_for",
    "tune",
]
