"""``gantry plan``: how many replicas of which shape carry a load within an SLO.

For each tensor-parallel size that fits (1, 2, 4, 8, or the one asked for): the
supervisor's derived arguments, the KV cache they leave, the sequences that run at
once, the per-replica capacity within the SLO (virtual time, ``capacity.py``), the
replicas the load needs and what they cost. The best option needs the fewest GPUs
(the cheapest at any per-GPU price); on a tie, the smaller TP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gantry.errors import ConfigError, DoesNotFit, ImpossibleSlo
from gantry.planner.capacity import Capacity, find_capacity
from gantry.planner.engine import Engine, plan_engine
from gantry.planner.slo import Target
from gantry.planner.workload import Workload
from gantry.sim.profiles import GPUProfile
from gantry.supervisor.cmdline import UserArgs
from gantry.supervisor.model import ModelInfo

TP_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True, slots=True)
class PlanRequest:
    model: ModelInfo
    gpu: GPUProfile
    qps: float
    workload: Workload
    slo: tuple[Target, ...]
    price: float | None = None  # dollars per GPU-hour
    tp: int | None = None  # only this TP size
    user: UserArgs = field(default_factory=UserArgs)


@dataclass(frozen=True, slots=True)
class Option:
    """One tensor-parallel size: why it does not work, or what it gives."""

    tp: int
    engine: Engine | None = None
    capacity: Capacity | None = None
    replicas: int = 0
    reason: str = ""  # when it cannot serve the load

    @property
    def ok(self) -> bool:
        return self.capacity is not None and self.capacity.rate > 0

    @property
    def gpus(self) -> int:
        return self.replicas * self.tp


@dataclass(frozen=True, slots=True)
class Plan:
    request: PlanRequest
    options: tuple[Option, ...]
    best: Option

    def cost_per_hour(self, option: Option | None = None) -> float | None:
        price = self.request.price
        return None if price is None else (option or self.best).gpus * price

    def cost_per_million(self, *, output_only: bool = False) -> float | None:
        """Dollars per 1M tokens (prompt and output, or output only) at the planned load."""
        hourly = self.cost_per_hour()
        if hourly is None:
            return None
        w = self.request.workload
        per_request = w.mean_output if output_only else w.mean_input + w.mean_output
        return hourly / (self.request.qps * 3600 * per_request) * 1e6


def make_plan(req: PlanRequest) -> Plan:
    if not (req.qps > 0 and math.isfinite(req.qps)):
        raise ConfigError("--qps must be positive")
    sizes = (req.tp,) if req.tp else TP_SIZES
    options = [_option(req, tp, explicit=req.tp is not None) for tp in sizes]
    usable = [o for o in options if o.ok]
    if not usable:
        raise _no_option(options)
    best = min(usable, key=lambda o: (o.gpus, o.tp))
    return Plan(req, tuple(options), best)


def _option(req: PlanRequest, tp: int, *, explicit: bool) -> Option:
    try:
        engine = plan_engine(req.model, req.gpu, tp, req.user)
    except DoesNotFit as exc:
        return Option(tp, reason=str(exc))
    except ConfigError as exc:
        if explicit:
            raise
        return Option(tp, reason=str(exc))  # e.g. heads not divisible by this TP
    w = req.workload
    if w.longest > engine.args.max_model_len:
        return Option(
            tp,
            engine,
            reason=f"requests of up to {w.longest} tokens exceed --max-model-len "
            f"{engine.args.max_model_len}",
        )
    try:
        cap = find_capacity(engine.resolved, w, req.slo)
    except ImpossibleSlo as exc:
        return Option(tp, engine, reason=str(exc))
    if cap.rate <= 0:
        return Option(tp, engine, cap, reason="no rate tried met the SLO")
    return Option(tp, engine, cap, replicas=math.ceil(req.qps / cap.rate - 1e-9))


def _no_option(options: list[Option]) -> ConfigError:
    """The error to raise when no TP size works: an SLO no rate meets first, then the
    largest TP's reason (its advice goes furthest)."""
    slo = [o for o in options if o.reason.startswith("no rate meets")]
    if slo:
        return ImpossibleSlo(slo[-1].reason)
    last = options[-1]
    if last.engine is None:
        return DoesNotFit(last.reason)
    return ConfigError(last.reason or "no tensor-parallel size can serve this load")


def option_dict(o: Option, plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {"tp": o.tp, "ok": o.ok}
    if o.reason:
        out["reason"] = o.reason
    if o.engine is not None:
        e, w = o.engine, plan.request.workload
        out |= {
            "kv_cache_blocks": e.kv_blocks,
            "block_size": e.block_size,
            "kv_cache_tokens": e.kv_tokens,
            "max_concurrent_sequences": e.max_concurrent(w.mean_input + w.mean_output),
            "args": e.args.argv(),
            "vllm_serve": e.vllm_serve(),
        }
    c = o.capacity
    if c is not None:
        out["capacity_rps"] = c.rate
        out["saturated_rps"] = c.saturated.achieved
        if c.at_rate is not None:
            out["output_tokens_per_s"] = c.at_rate.output_tps
            out["at_capacity_ms"] = {k: v * 1000 for k, v in c.at_rate.values.items()}
        out["alone_ms"] = {k: v * 1000 for k, v in c.alone.values.items()}
        out["virtual_seconds"] = c.sim_seconds
        out["wall_seconds"] = c.wall_seconds
    if o.ok:
        out["replicas"] = o.replicas
        out["gpus"] = o.gpus
        out["cost_per_hour"] = plan.cost_per_hour(o)
    return out


def plan_dict(plan: Plan) -> dict[str, Any]:
    r, b = plan.request, plan.best
    w = r.workload
    return {
        "model": r.model.name,
        "gpu": r.gpu.name,
        "qps": r.qps,
        "workload": {
            "name": w.name,
            "requests": len(w),
            "mean_input_tokens": w.mean_input,
            "mean_output_tokens": w.mean_output,
        },
        "slo": {t.label: t.seconds * 1000 for t in r.slo},
        "price_per_gpu_hour": r.price,
        "best": option_dict(b, plan),
        "cost_per_hour": plan.cost_per_hour(),
        "cost_per_1m_tokens": plan.cost_per_million(),
        "cost_per_1m_output_tokens": plan.cost_per_million(output_only=True),
        "options": [option_dict(o, plan) for o in plan.options],
    }


__all__ = ["TP_SIZES", "Option", "Plan", "PlanRequest", "make_plan", "option_dict", "plan_dict"]
