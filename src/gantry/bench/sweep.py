"""`gantry bench sweep`: one workload over a list of request rates."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gantry.bench.datasets import Job
from gantry.bench.runner import RunSpec, run_sync
from gantry.bench.stats import summarize


def parse_rates(spec: str) -> list[float]:
    try:
        rates = [math.inf if r.strip() == "inf" else float(r) for r in spec.split(",")]
    except ValueError:
        raise ValueError(f"--rates must be numbers separated by commas, got {spec!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise ValueError("--rates must be positive")
    return rates


def meets(summary: dict[str, Any], attainment: float) -> bool:
    return summary["failed"] == 0 and summary.get("slo_attainment", 1.0) >= attainment


def sweep(
    spec: RunSpec,
    jobs: list[Job],
    rates: list[float],
    slo: dict[str, float],
    *,
    attainment: float = 0.99,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    console = console or Console()
    runs = []
    for rate in rates:
        results, duration = run_sync(
            replace(spec, schedule=replace(spec.schedule, rate=rate)), jobs, progress
        )
        s = summarize(results, duration, slo)
        s["request_rate"] = "inf" if math.isinf(rate) else rate
        runs.append(s)
    best = None
    for s in runs:
        if meets(s, attainment):
            best = s["request_rate"]
    t = Table(title="sweep", title_justify="left")
    for col in ("rate", "req/s", "out tok/s", "p99 TTFT ms", "p99 TPOT ms", "goodput", "SLO ok"):
        t.add_column(col, justify="right")
    for s in runs:
        t.add_row(
            str(s["request_rate"]),
            f"{s['request_throughput']:.2f}",
            f"{s['output_throughput']:.1f}",
            f"{s['p99_ttft_ms']:.1f}",
            f"{s['p99_tpot_ms']:.1f}",
            "-" if s["request_goodput"] is None else f"{s['request_goodput']:.2f}",
            "yes" if meets(s, attainment) else "no",
        )
    console.print(t)
    console.print(f"highest rate meeting the SLO: {best if best is not None else 'none'}")
    return {"runs": runs, "best_rate": best, "slo_ms": slo, "attainment": attainment}


def plot_sweep(result: dict[str, Any], outdir: str | Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("plots need matplotlib: pip install 'gantry[bench]'") from exc
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    runs = result["runs"]
    x = [s["output_throughput"] for s in runs]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (
        ("p50_ttft_ms", "TTFT p50"),
        ("p99_ttft_ms", "TTFT p99"),
        ("p50_tpot_ms", "TPOT p50"),
        ("p99_tpot_ms", "TPOT p99"),
    ):
        ax.plot(x, [s[key] for s in runs], marker="o", label=label)
    ax.set_xlabel("output throughput (tok/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("latency vs throughput")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "sweep.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
