"""Tuning against real engines: each configuration is started through the supervisor
(``vllm serve`` on this machine's GPUs) and driven by ``gantry bench`` in real time.

It needs GPUs and vLLM: without them the supervisor refuses in one line ("cannot run
vLLM engines: ..."), and so does ``gantry tune --real``. The same capacity search as
in virtual time (``capacity.search``) runs over bench runs, so each trial takes
minutes of wall-clock time. ``mode="simulate"`` runs ``gantry sim`` engines instead,
in real time (the same path, without GPUs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gantry.bench.arrivals import Schedule
from gantry.bench.client import Target as BenchTarget
from gantry.bench.runner import RunSpec, run_sync
from gantry.bench.stats import RequestResult, percentile
from gantry.netutil import free_port
from gantry.planner.capacity import ALONE, Capacity, Probe, search
from gantry.planner.slo import Target
from gantry.planner.tune import KEYS, context_for
from gantry.planner.workload import Workload
from gantry.supervisor.args import EngineArgs
from gantry.supervisor.config import LaunchSpec, WarmupSettings
from gantry.supervisor.model import ModelInfo, load_model
from gantry.supervisor.supervisor import prepare
from gantry.supervisor.thread import SupervisorThread


def _argv(args: dict[str, Any]) -> tuple[str, ...]:
    out = [
        "--max-num-seqs",
        str(args["max_num_seqs"]),
        "--max-num-batched-tokens",
        str(args["max_num_batched_tokens"]),
        "--gpu-memory-utilization",
        f"{args['gpu_memory_utilization']:.2f}",
        "--max-model-len",
        str(args["max_model_len"]),
    ]
    for key in ("enable_chunked_prefill", "enable_prefix_caching"):
        out.append(("--" if args[key] else "--no-") + key.replace("_", "-"))
    return tuple(out)


def probe(
    results: list[RequestResult], elapsed: float, slo: tuple[Target, ...], rate: float
) -> Probe:
    """A bench run as a capacity probe (the same definitions as a virtual run)."""
    ok = [r for r in results if r.ok]
    series = {
        "ttft": [r.ttft for r in ok],
        "tpot": [t for r in ok if (t := r.tpot) is not None],
        "e2el": [r.e2el for r in ok],
    }
    values = {
        t.label: percentile(series[t.metric], t.percentile) if series[t.metric] else math.inf
        for t in slo
    }
    passed = len(ok) == len(results) and all(values[t.label] <= t.seconds for t in slo)
    out_tps = sum(r.output_tokens for r in ok) / elapsed if elapsed > 0 else 0.0
    achieved = len(ok) / elapsed if elapsed > 0 else 0.0
    return Probe(rate, passed, achieved, out_tps, values, False, elapsed, elapsed)


@dataclass(frozen=True, slots=True)
class EngineEvaluator:
    """One engine per configuration, on the first ``tp`` GPUs, started and stopped here."""

    model: str
    tp: int
    workload: Workload
    slo: tuple[Target, ...]
    mode: str = "vllm"  # "simulate": gantry sim engines in real time
    sim_args: tuple[str, ...] = ()

    def _spec(self, argv: tuple[str, ...]) -> LaunchSpec:
        return LaunchSpec(
            model=self.model,
            gpus=tuple(range(self.tp)) if self.mode == "vllm" else None,
            tp=self.tp,
            port=free_port(),
            mode=self.mode,  # type: ignore[arg-type]
            vllm_args=argv,
            sim_args=self.sim_args,
            warmup=WarmupSettings(enabled=False),
        )

    def info(self) -> ModelInfo:
        return load_model(self.model)

    def derived(self) -> dict[str, Any]:
        plan, detection = prepare(self._spec(()))  # LaunchError without GPUs or vLLM
        if detection.source is not None:
            detection.source.close()
        args: EngineArgs = plan.engines[0].args
        return {k: getattr(args, k) for k in KEYS}

    def evaluate(self, args: dict[str, Any]) -> tuple[Capacity, str, dict[str, Any]]:
        full = {**args, "max_model_len": context_for(self.workload, self.info())}
        launched = SupervisorThread(self._spec(_argv(full)))
        (engine,) = launched.start()
        try:
            assert launched.supervisor is not None
            started = launched.supervisor.plan.engines[0]
            line = " ".join(started.argv)
            effective = {k: getattr(started.args, k) for k in KEYS}
            target = BenchTarget(model=engine.models[0], chat=self.workload.chat)
            jobs = list(self.workload.jobs)
            w = self.workload

            def bench(rate: float, n: int, concurrency: int | None) -> tuple[Any, float]:
                schedule = Schedule(rate, w.burstiness, seed=w.seed)
                spec = RunSpec(engine.url, target, schedule, concurrency)
                return run_sync(spec, jobs[:n], False)

            def alone() -> Probe:
                return probe(*bench(math.inf, ALONE, 1), self.slo, 0.0)

            def at(rate: float) -> Probe:
                return probe(*bench(rate, len(jobs), None), self.slo, rate)

            where = f"{self.model} (TP {self.tp}, real engine)"
            return search(alone, at, self.slo, where=where, precision=0.05), line, effective
        finally:
            launched.stop()


__all__ = ["EngineEvaluator", "probe"]
