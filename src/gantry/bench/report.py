"""Results out: a summary table, `vllm bench serve`-compatible JSON, and plots."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gantry.bench.stats import RequestResult

_LINES = [
    ("Successful requests", "completed", "{:.0f}"),
    ("Failed requests", "failed", "{:.0f}"),
    ("Benchmark duration (s)", "duration", "{:.2f}"),
    ("Total input tokens", "total_input_tokens", "{:.0f}"),
    ("Total generated tokens", "total_output_tokens", "{:.0f}"),
    ("Request throughput (req/s)", "request_throughput", "{:.2f}"),
    ("Request goodput (req/s)", "request_goodput", "{:.2f}"),
    ("Output token throughput (tok/s)", "output_throughput", "{:.2f}"),
    ("Peak output token throughput (tok/s)", "max_output_tokens_per_s", "{:.2f}"),
    ("Peak concurrent requests", "max_concurrent_requests", "{:.0f}"),
    ("Total token throughput (tok/s)", "total_token_throughput", "{:.2f}"),
]


def result_json(summary: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys as `vllm bench serve --save-result` writes them, plus ours."""
    rate = meta.get("request_rate", math.inf)
    return {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": meta.get("endpoint_type", "openai-chat"),
        "backend": meta.get("backend", "openai-chat"),
        "label": meta.get("label"),
        "model_id": meta.get("model"),
        "tokenizer_id": meta.get("model"),
        "num_prompts": meta.get("num_prompts"),
        "request_rate": "inf" if math.isinf(rate) else rate,
        "burstiness": meta.get("burstiness", 1.0),
        "max_concurrency": meta.get("max_concurrency"),
        "dataset": meta.get("dataset"),
        **summary,
    }


def print_summary(res: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    t = Table(
        title=f"gantry bench: {res.get('model_id')} ({res.get('dataset')})",
        show_header=False,
        title_justify="left",
    )
    for label, key, fmt in _LINES:
        v = res.get(key)
        t.add_row(label, "-" if v is None else fmt.format(v))
    for name, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL")):
        for stat in ("mean", "median", "p90", "p99"):
            t.add_row(
                f"{stat.capitalize() if stat[0] != 'p' else stat.upper()} {label} (ms)",
                f"{res.get(f'{stat}_{name}_ms', 0.0):.2f}",
            )
    errors = res.get("errors_by_status") or {}
    if errors:
        t.add_row("Errors by status", ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())))
    if res.get("slo_ms"):
        t.add_row("SLO attainment", f"{res.get('slo_attainment', 0.0) * 100:.1f}%")
    console.print(t)


def save_json(res: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(res, indent=2, sort_keys=False) + "\n")


def plot(results: list[RequestResult], outdir: str | Path) -> list[Path]:
    """Latency CDFs and throughput/TTFT over time as PNGs (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("plots need matplotlib: pip install 'gantry[bench]'") from exc
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    ok = [r for r in results if r.ok]
    files = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    series = {
        "TTFT": [r.ttft * 1000 for r in ok],
        "TPOT": [t * 1000 for r in ok if (t := r.tpot) is not None],
        "E2EL": [r.e2el * 1000 for r in ok],
    }
    for ax, (name, vals) in zip(axes, series.items(), strict=True):
        s = sorted(vals)
        ax.plot(s, [(i + 1) / len(s) for i in range(len(s))] if s else [])
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{name} CDF")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    files.append(out / "latency_cdf.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    buckets: dict[int, int] = {}
    for r in ok:
        for t in r.chunk_times:
            buckets[int(t)] = buckets.get(int(t), 0) + 1
    xs = sorted(buckets)
    a1.plot(xs, [buckets[x] for x in xs])
    a1.set_xlabel("time (s)")
    a1.set_ylabel("output tokens/s")
    a1.set_title("Throughput over time")
    a2.scatter([r.start for r in ok], [r.ttft * 1000 for r in ok], s=4)
    a2.set_xlabel("request start (s)")
    a2.set_ylabel("TTFT (ms)")
    a2.set_title("TTFT over time")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    files.append(out / "over_time.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    return files
