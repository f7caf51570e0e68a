"""The ``gantry plan`` and ``gantry tune`` commands (mounted by ``gantry.cli``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gantry.console import fail
from gantry.errors import GantryError

if TYPE_CHECKING:
    from gantry.planner.workload import Workload

Model = Annotated[
    str, typer.Option(metavar="MODEL", help="Built-in name, HF id, checkout or config.json.")
]
Gpu = Annotated[
    str,
    typer.Option(metavar="GPU", help="T4, L4, A10G, A40, A100-40GB, A100-80GB, H100, H200."),
]
Slo = Annotated[
    str, typer.Option(metavar="SLO", help="e.g. ttft_p90=500ms,tpot_p90=50ms (default p90).")
]
InputTokens = Annotated[int, typer.Option(metavar="TOKENS", help="Prompt length (random data).")]
OutputTokens = Annotated[int, typer.Option(metavar="TOKENS", help="Output tokens per request.")]
Dataset = Annotated[
    str, typer.Option(metavar="KIND", help="random, shared-prefix, sharegpt or jsonl.")
]
DatasetPath = Annotated[
    Path | None, typer.Option(metavar="PATH", help="File for sharegpt / jsonl.")
]
Requests = Annotated[int, typer.Option(metavar="N", help="Requests per simulated run.")]
Seed = Annotated[int, typer.Option(metavar="N", help="Random seed (data and arrivals).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _workload(
    dataset: str, path: Path | None, requests: int, inp: int, out: int, seed: int
) -> Workload:
    from gantry.bench.datasets import DatasetError, jsonl_jobs, shared_prefix_jobs, sharegpt_jobs
    from gantry.errors import ConfigError
    from gantry.planner.workload import from_jobs, synthetic

    if requests < 1:
        raise ConfigError("--requests must be at least 1")
    if dataset == "random":
        return synthetic(requests, inp, out, seed=seed)
    try:
        if dataset == "shared-prefix":
            jobs = shared_prefix_jobs(8, max(1, requests // 8), inp, 32, out, seed=seed)
        elif dataset in ("sharegpt", "jsonl"):
            if path is None:
                raise ConfigError(f"--dataset {dataset} needs --dataset-path")
            if dataset == "sharegpt":
                jobs = sharegpt_jobs(path, requests, seed=seed)
            else:
                jobs = jsonl_jobs(path, requests, output_len=out)
        else:
            raise ConfigError(
                f"unknown dataset {dataset!r}: use random, shared-prefix, sharegpt or jsonl"
            )
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None
    if len(jobs) < requests:  # a short file is repeated (prefix caching sees the repeats)
        jobs = (jobs * -(-requests // len(jobs)))[:requests]
    return from_jobs(jobs, f"{dataset} {path.name if path else ''}".strip(), seed=seed)


def plan(
    model: Model,
    gpu: Gpu,
    qps: Annotated[float, typer.Option(metavar="RPS", help="Requests/s the fleet must carry.")],
    slo: Slo,
    input_tokens: InputTokens = 1000,
    output_tokens: OutputTokens = 200,
    dataset: Dataset = "random",
    dataset_path: DatasetPath = None,
    price: Annotated[
        str | None, typer.Option(metavar="PRICE", help="Dollars per GPU-hour, e.g. 2.5/h.")
    ] = None,
    tp: Annotated[
        int | None, typer.Option("--tp", metavar="N", help="Only this tensor-parallel size.")
    ] = None,
    requests: Requests = 300,
    seed: Seed = 0,
    as_json: AsJson = False,
) -> None:
    """Size a fleet for a load and an SLO: replicas, TP and cost.

    Capacity comes from the simulator's scheduler and latency model run in virtual
    time; TP 1, 2, 4 and 8 are compared unless --tp is given.
    """
    from gantry.planner.plan import PlanRequest, make_plan, plan_dict
    from gantry.planner.report import plan_text
    from gantry.planner.slo import parse_price, parse_slo
    from gantry.supervisor.gpus import table_entry
    from gantry.supervisor.model import load_model

    try:
        targets = parse_slo(slo)
        dollars = parse_price(price) if price is not None else None
        info = load_model(model)
        profile = table_entry(gpu)
        if tp is not None and tp < 1:
            fail("--tp must be at least 1")
        work = _workload(dataset, dataset_path, requests, input_tokens, output_tokens, seed)
        result = make_plan(PlanRequest(info, profile, qps, work, targets, dollars, tp))
    except GantryError as exc:
        fail(str(exc))
    typer.echo(json.dumps(plan_dict(result), indent=2) if as_json else plan_text(result))


def tune(
    model: Model,
    gpu: Gpu,
    slo: Slo,
    tp: Annotated[int, typer.Option("--tp", metavar="N", help="Tensor-parallel size.")] = 1,
    input_tokens: InputTokens = 1000,
    output_tokens: OutputTokens = 200,
    dataset: Dataset = "random",
    dataset_path: DatasetPath = None,
    requests: Requests = 200,
    seed: Seed = 0,
    max_trials: Annotated[
        int, typer.Option(metavar="N", help="Configurations measured at most.")
    ] = 30,
    plot: Annotated[
        Path | None, typer.Option(metavar="PATH", help="Write a PNG of the trials here.")
    ] = None,
    real: Annotated[
        bool,
        typer.Option("--real", help="Real engines on this machine's GPUs (needs vLLM)."),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Find the engine arguments that carry the most load within an SLO.

    Searches max_num_seqs, max_num_batched_tokens, chunked prefill,
    gpu_memory_utilization and prefix caching, in virtual time with the simulator;
    --real starts each configuration with vLLM instead (GPUs needed; slow).
    """
    from gantry.planner.real import EngineEvaluator
    from gantry.planner.report import trial_line, trials_header, tune_plot, tune_text
    from gantry.planner.slo import parse_slo
    from gantry.planner.tune import Evaluator, VirtualEvaluator
    from gantry.planner.tune import tune as run_tune
    from gantry.supervisor.gpus import table_entry
    from gantry.supervisor.model import load_model

    try:
        targets = parse_slo(slo)
        info = load_model(model)
        profile = table_entry(gpu)
        if tp < 1:
            fail("--tp must be at least 1")
        if max_trials < 1:
            fail("--max-trials must be at least 1")
        work = _workload(dataset, dataset_path, requests, input_tokens, output_tokens, seed)
        evaluator: Evaluator = (
            EngineEvaluator(model, tp, work, targets)
            if real
            else VirtualEvaluator(info, profile, tp, work, targets)
        )
        labels = [t.label for t in targets]
        if not as_json:
            typer.echo(trials_header(labels))
        show = None if as_json else (lambda t: typer.echo(trial_line(t, labels)))
        result = run_tune(evaluator, max_trials=max_trials, on_trial=show)
        if plot is not None:
            title = f"{info.name} on {profile.name} (TP {tp}), {', '.join(map(str, targets))}"
            tune_plot(result, plot, title)
    except GantryError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
    else:
        # the table was printed trial by trial; now the verdict
        typer.echo("\n" + tune_text(result, labels).split("\n\n", 1)[-1])
    if plot is not None and not as_json:
        typer.echo(f"plot      {plot}")


__all__ = ["plan", "tune"]
