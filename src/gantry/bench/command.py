"""The `gantry bench` commands: run (default), compare, sweep."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from gantry.bench.arrivals import Schedule, parse_steps
from gantry.bench.client import Target
from gantry.bench.datasets import (
    DatasetError,
    Job,
    jsonl_jobs,
    multi_turn_jobs,
    random_jobs,
    shared_prefix_jobs,
    sharegpt_jobs,
)
from gantry.bench.runner import BenchError, RunSpec, _loop_run, base_of, discover_model
from gantry.console import fail

bench_app = typer.Typer(
    help="Load-test any OpenAI-compatible endpoint.",
    invoke_without_command=True,
    no_args_is_help=False,
)

Url = Annotated[
    str | None, typer.Option(metavar="URL", help="Target, e.g. http://127.0.0.1:8080/v1.")
]
Endpoint = Annotated[str, typer.Option(metavar="API", help="chat or completions.")]
Model = Annotated[
    str | None, typer.Option(metavar="NAME", help="Model name (default: first in /v1/models).")
]
ApiKey = Annotated[
    str | None, typer.Option(metavar="KEY", help="Bearer key (default: $OPENAI_API_KEY).")
]
Dataset = Annotated[
    str,
    typer.Option(metavar="KIND", help="random, shared-prefix, multi-turn, sharegpt or jsonl."),
]
DatasetPath = Annotated[
    Path | None, typer.Option(metavar="PATH", help="File for sharegpt / jsonl.")
]
NumPrompts = Annotated[
    int, typer.Option(metavar="N", help="Requests (or sessions for multi-turn).")
]
InputLen = Annotated[int, typer.Option(metavar="TOKENS", help="Prompt length (approximately).")]
OutputLen = Annotated[int, typer.Option(metavar="TOKENS", help="Output tokens per request.")]
RangeRatio = Annotated[float, typer.Option(metavar="R", help="Lengths uniform in L(1-R)..L(1+R).")]
PrefixLen = Annotated[
    int, typer.Option(metavar="TOKENS", help="Shared prefix (random, shared-prefix).")
]
NumPrefixes = Annotated[int, typer.Option(metavar="N", help="shared-prefix: distinct prefixes.")]
SuffixLen = Annotated[int, typer.Option(metavar="TOKENS", help="shared-prefix: question length.")]
Turns = Annotated[int, typer.Option(metavar="N", help="multi-turn: turns per session.")]
Rate = Annotated[str, typer.Option(metavar="RPS", help="Requests/s ('inf': all at once).")]
Burstiness = Annotated[float, typer.Option(metavar="SHAPE", help="Gamma shape; 1 = Poisson.")]
Ramp = Annotated[str | None, typer.Option(metavar="START:END", help="Linear ramp of requests/s.")]
Steps = Annotated[
    str | None, typer.Option(metavar="STEPS", help="Step schedule, e.g. 10s:5,10s:20.")
]
Concurrency = Annotated[int | None, typer.Option(metavar="N", help="Cap on requests in flight.")]
Duration = Annotated[
    float | None, typer.Option(metavar="SECONDS", help="Stop sending after this long.")
]
Slo = Annotated[str | None, typer.Option(metavar="SLO", help="e.g. ttft=500ms,tpot=50ms,e2el=10s.")]
Seed = Annotated[int, typer.Option(metavar="N", help="Random seed.")]
Stream = Annotated[bool, typer.Option("--stream/--no-stream")]
IgnoreEos = Annotated[bool, typer.Option("--ignore-eos/--no-ignore-eos")]
ExtraBody = Annotated[
    str | None, typer.Option(metavar="JSON", help="Merged into every request body.")
]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="No live display.")]


def _jobs(
    dataset: str,
    path: Path | None,
    num: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    prefix_len: int,
    num_prefixes: int,
    suffix_len: int,
    turns: int,
    seed: int,
) -> list[Job]:
    if dataset == "random":
        return random_jobs(
            num, input_len, output_len, range_ratio=range_ratio, prefix_len=prefix_len, seed=seed
        )
    if dataset == "shared-prefix":
        per = max(1, num // max(1, num_prefixes))
        return shared_prefix_jobs(
            num_prefixes, per, prefix_len or input_len, suffix_len, output_len, seed=seed
        )
    if dataset == "multi-turn":
        return multi_turn_jobs(num, turns, input_len, output_len, seed=seed)
    if dataset in ("sharegpt", "jsonl"):
        if path is None:
            raise DatasetError(f"--dataset {dataset} needs --dataset-path")
        if dataset == "sharegpt":
            return sharegpt_jobs(path, num, seed=seed)
        return jsonl_jobs(path, num, output_len=output_len)
    raise DatasetError(
        f"unknown dataset {dataset!r}: use random, shared-prefix, multi-turn, sharegpt or jsonl"
    )


def _prepare(o: dict[str, Any]) -> tuple[RunSpec, list[Job], dict[str, Any], dict[str, float]]:
    from gantry.bench.slo import SLOError, parse_slo

    try:
        if not o["url"]:
            raise BenchError("--url is required")
        if o["endpoint"] not in ("chat", "completions"):
            raise BenchError("--endpoint must be chat or completions")
        base = base_of(o["url"])
        slo = parse_slo(o["slo"])
        try:
            rate = math.inf if o["rate"] == "inf" else float(o["rate"])
        except ValueError:
            raise BenchError(f"--rate must be a number or 'inf', got {o['rate']!r}") from None
        if rate <= 0 or o["burstiness"] <= 0:
            raise BenchError("--rate and --burstiness must be positive")
        ramp = None
        if o["ramp"]:
            a, _, b = o["ramp"].partition(":")
            try:
                ramp = (float(a), float(b))
            except ValueError:
                raise BenchError("--ramp must look like START:END, e.g. 1:50") from None
        steps = parse_steps(o["steps"]) if o["steps"] else ()
        extra = json.loads(o["extra_body"]) if o["extra_body"] else {}
        if not isinstance(extra, dict):
            raise BenchError("--extra-body must be a JSON object")
        jobs = _jobs(
            o["dataset"],
            o["dataset_path"],
            o["num_prompts"],
            o["input_len"],
            o["output_len"],
            o["range_ratio"],
            o["prefix_len"],
            o["num_prefixes"],
            o["suffix_len"],
            o["turns"],
            o["seed"],
        )
        key = o["api_key"] or os.environ.get("OPENAI_API_KEY")
        model = o["model"] or _loop_run(discover_model(base, key))
    except (BenchError, SLOError, DatasetError, ValueError) as exc:
        fail(str(exc))
    target = Target(
        model=model,
        chat=o["endpoint"] == "chat",
        stream=o["stream"],
        ignore_eos=o["ignore_eos"],
        extra_body=extra,
    )
    spec = RunSpec(
        base,
        target,
        Schedule(rate, o["burstiness"], ramp, steps, o["seed"]),
        o["max_concurrency"],
        o["duration"],
        key,
    )
    meta = {
        "model": model,
        "num_prompts": len(jobs),
        "request_rate": rate,
        "burstiness": o["burstiness"],
        "max_concurrency": o["max_concurrency"],
        "dataset": o["dataset"],
        "label": o.get("label"),
        "endpoint_type": "openai-chat" if target.chat else "openai",
        "backend": "openai-chat" if target.chat else "openai",
    }
    return spec, jobs, meta, slo


@bench_app.callback()
def bench(
    ctx: typer.Context,
    url: Url = None,
    endpoint: Endpoint = "chat",
    model: Model = None,
    api_key: ApiKey = None,
    dataset: Dataset = "random",
    dataset_path: DatasetPath = None,
    num_prompts: NumPrompts = 200,
    input_len: InputLen = 256,
    output_len: OutputLen = 128,
    range_ratio: RangeRatio = 0.0,
    prefix_len: PrefixLen = 0,
    num_prefixes: NumPrefixes = 8,
    suffix_len: SuffixLen = 32,
    turns: Turns = 4,
    rate: Rate = "inf",
    burstiness: Burstiness = 1.0,
    ramp: Ramp = None,
    steps: Steps = None,
    max_concurrency: Concurrency = None,
    duration: Duration = None,
    slo: Slo = None,
    seed: Seed = 0,
    stream: Stream = True,
    ignore_eos: IgnoreEos = True,
    extra_body: ExtraBody = None,
    no_progress: NoProgress = False,
    output: Annotated[
        Path | None, typer.Option(metavar="PATH", help="Write the JSON result here.")
    ] = None,
    plot_dir: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Write PNG plots here.")
    ] = None,
    label: Annotated[
        str | None, typer.Option(metavar="LABEL", help="Stored in the result.")
    ] = None,
) -> None:
    """Run a load test: TTFT, TPOT, ITL, E2E latency, throughput, goodput."""
    opts = dict(locals())
    opts.pop("ctx")
    ctx.obj = opts
    if ctx.invoked_subcommand is not None:
        return
    from gantry.bench.report import plot, print_summary, result_json, save_json
    from gantry.bench.runner import run_sync
    from gantry.bench.stats import summarize

    spec, jobs, meta, slo_ms = _prepare(opts)
    results, elapsed = run_sync(spec, jobs, not no_progress)
    res = result_json(summarize(results, elapsed, slo_ms), meta)
    print_summary(res)
    if output:
        save_json(res, output)
        typer.echo(f"result written to {output}")
    if plot_dir:
        try:
            for f in plot(results, plot_dir):
                typer.echo(f"plot written to {f}")
        except RuntimeError as exc:
            fail(str(exc))


@bench_app.command("compare")
def compare_cmd(
    a: Annotated[Path | None, typer.Argument(metavar="A", hidden=True)] = None,
    b: Annotated[Path | None, typer.Argument(metavar="B", hidden=True)] = None,
    slo: Slo = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 if B fails an SLO.")] = False,
    gateway: Annotated[
        str | None,
        typer.Option(metavar="URL", help="Compare arms from this gateway's /metrics."),
    ] = None,
    split: Annotated[
        str | None, typer.Option(metavar="NAME", help="With --gateway: the split's arms.")
    ] = None,
    shadow: Annotated[
        str | None,
        typer.Option(metavar="MODEL", help="With --gateway: a model and its shadow."),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(metavar="KEY", help="With --gateway: a key for /metrics.")
    ] = None,
) -> None:
    """Compare two results side by side, or two arms.

    A and B are JSON files written by `gantry bench --output`; the table shows ratios
    and SLO verdicts. With --gateway URL and --split NAME (or --shadow MODEL) the two
    arms come from the gateway's metrics instead (percentiles from its histograms).
    """
    from gantry.bench.compare import compare, load_result
    from gantry.bench.slo import SLOError, parse_slo

    try:
        slo_ms = parse_slo(slo)
        if gateway is not None:
            (na, ra), (nb, rb) = _gateway_arms(gateway, split, shadow, api_key)
        elif a is not None and b is not None:
            ra, rb, na, nb = load_result(a), load_result(b), a.stem, b.stem
        else:
            fail("give two result files A B, or --gateway URL with --split or --shadow")
    except (DatasetError, SLOError) as exc:
        fail(str(exc))
    failures = compare(ra, rb, slo_ms, (na, nb))
    if strict and failures:
        raise typer.Exit(1)


def _gateway_arms(
    url: str, split: str | None, shadow: str | None, api_key: str | None
) -> list[tuple[str, dict[str, Any]]]:
    import urllib.error
    import urllib.request

    from gantry.bench.arms import shadow_arms, split_arms

    if (split is None) == (shadow is None):
        raise DatasetError("with --gateway, give one of --split NAME or --shadow MODEL")
    req = urllib.request.Request(url.rstrip("/").removesuffix("/v1") + "/metrics")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise DatasetError(f"cannot read {req.full_url}: {exc}") from None
    arms = split_arms(text, split) if split is not None else shadow_arms(text, str(shadow))
    if len(arms) < 2:
        what = f"split {split!r}" if split is not None else f"shadow of {shadow!r}"
        raise DatasetError(f"{what}: {len(arms)} arm(s) with traffic in the metrics, need 2")
    return list(arms.items())[:2]


@bench_app.command("sweep")
def sweep_cmd(
    ctx: typer.Context,
    rates: Annotated[
        str, typer.Option(metavar="RATES", help="Requests/s to try, e.g. 1,2,4,8.")
    ] = "1,2,4,8",
    attainment: Annotated[
        float, typer.Option(metavar="FRACTION", help="Share of requests that must meet the SLO.")
    ] = 0.99,
) -> None:
    """Run the bench workload at each rate and find the best one.

    The workload comes from the `gantry bench` options given before `sweep`.
    """
    from gantry.bench.report import save_json
    from gantry.bench.sweep import parse_rates, plot_sweep, sweep

    opts = ctx.obj
    try:
        rate_list = parse_rates(rates)
    except ValueError as exc:
        fail(str(exc))
    spec, jobs, _, slo_ms = _prepare(opts)
    result = sweep(
        spec, jobs, rate_list, slo_ms, attainment=attainment, progress=not opts["no_progress"]
    )
    if opts["output"]:
        save_json(result, opts["output"])
        typer.echo(f"result written to {opts['output']}")
    if opts["plot_dir"]:
        try:
            typer.echo(f"plot written to {plot_sweep(result, opts['plot_dir'])}")
        except RuntimeError as exc:
            fail(str(exc))
