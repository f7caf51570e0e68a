"""`gantry bench compare A.json B.json`: side by side, ratios, and a verdict per SLO."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gantry.bench.datasets import DatasetError

# (key, label, higher_is_better)
ROWS = [
    ("request_throughput", "Request throughput (req/s)", True),
    ("output_throughput", "Output throughput (tok/s)", True),
    ("request_goodput", "Goodput (req/s)", True),
    ("failed", "Failed requests", False),
    *[
        (f"{s}_{m}_ms", f"{s.upper() if s[0] == 'p' else s.capitalize()} {m.upper()} (ms)", False)
        for m in ("ttft", "tpot", "itl", "e2el")
        for s in ("mean", "median", "p99")
    ],
]


def load_result(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise DatasetError(f"cannot read {p}: {exc.strerror}") from None
    except ValueError:
        raise DatasetError(f"{p}: not valid JSON") from None
    if not isinstance(data, dict) or "completed" not in data or "mean_ttft_ms" not in data:
        raise DatasetError(f"{p}: not a benchmark result (no 'completed'/'mean_ttft_ms')")
    return data


def slo_verdicts(res: dict[str, Any], slo: dict[str, float], pct: int = 99) -> dict[str, bool]:
    """An SLO passes when the run's p<pct> of that metric is within the target."""
    return {
        m: float(res.get(f"p{pct}_{m}_ms", float("inf"))) <= target for m, target in slo.items()
    }


def compare(
    a: dict[str, Any],
    b: dict[str, Any],
    slo: dict[str, float],
    names: tuple[str, str] = ("A", "B"),
    console: Console | None = None,
) -> int:
    """Print the comparison; return how many SLOs B fails."""
    console = console or Console()
    t = Table(title=f"{names[0]} vs {names[1]}", title_justify="left")
    for col in ("metric", names[0], names[1], "B/A", "better"):
        t.add_column(col, justify="right" if col != "metric" else "left")
    for key, label, higher in ROWS:
        va, vb = a.get(key), b.get(key)
        if va is None or vb is None:
            continue
        ratio = (vb / va) if va else float("inf") if vb else 1.0
        better = "=" if va == vb else (names[1] if (vb > va) == higher else names[0])
        t.add_row(label, f"{va:.2f}", f"{vb:.2f}", f"{ratio:.2f}x", better)
    console.print(t)
    slo = slo or b.get("slo_ms") or a.get("slo_ms") or {}
    failures = 0
    if slo:
        va, vb = slo_verdicts(a, slo), slo_verdicts(b, slo)
        s = Table(title="SLO verdicts (p99 within target)", title_justify="left")
        for col in ("SLO", names[0], names[1]):
            s.add_column(col)
        for m, target in slo.items():
            s.add_row(
                f"{m} <= {target:g} ms", "pass" if va[m] else "FAIL", "pass" if vb[m] else "FAIL"
            )
            failures += 0 if vb[m] else 1
        console.print(s)
    return failures
