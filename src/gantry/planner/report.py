"""The plan and the tuning run as text tables (the JSON forms are in plan.py, tune.py)."""

from __future__ import annotations

from pathlib import Path

from gantry.errors import ConfigError
from gantry.planner.plan import Plan
from gantry.planner.tune import Trial, Tuning


def _ms(v: float) -> str:
    return f"{v * 1000:.0f}" if v < 10 else f"{v:.0f}s"


def _money(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"${v:,.{digits}f}"


def plan_text(plan: Plan) -> str:
    r, b = plan.request, plan.best
    w = r.workload
    labels = [t.label for t in r.slo]
    lines = [
        f"model     {r.model.name} ({r.model.params / 1e9:.1f}B parameters)",
        f"gpu       {r.gpu.name} ({r.gpu.memory_gib:.0f} GiB)",
        f"load      {r.qps:g} req/s of {w.name} ({w.mean_input:.0f} in / "
        f"{w.mean_output:.0f} out tokens on average, {len(w)} requests simulated)",
        f"slo       {', '.join(str(t) for t in r.slo)}",
        "",
        "  TP  KV blocks  KV tokens  max seqs  req/s/replica  out tok/s  "
        + "  ".join(f"{lbl:>9}" for lbl in labels)
        + "  replicas  GPUs       $/h",
    ]
    for o in plan.options:
        if o.engine is None or o.capacity is None or not o.ok:
            lines.append(f"  {o.tp:>2}  {o.reason}")
            continue
        e, c = o.engine, o.capacity
        at = c.at_rate
        assert at is not None
        lines.append(
            f"  {o.tp:>2}  {e.kv_blocks:>9,}  {e.kv_tokens:>9,}  "
            f"{e.max_concurrent(w.mean_input + w.mean_output):>8}  {c.rate:>13.2f}  "
            f"{at.output_tps:>9,.0f}  "
            + "  ".join(f"{_ms(at.values[lbl]) + ' ms':>9}" for lbl in labels)
            + f"  {o.replicas:>8}  {o.gpus:>4}  {_money(plan.cost_per_hour(o)):>8}"
        )
    assert b.engine is not None and b.capacity is not None
    lines += [
        "",
        f"best      TP {b.tp}: {b.replicas} replica(s) x {b.tp} GPU(s) = {b.gpus} x {r.gpu.name}, "
        f"{b.capacity.rate:.2f} req/s per replica within the SLO",
        f"kv cache  {b.engine.kv_blocks:,} blocks x {b.engine.block_size} = "
        f"{b.engine.kv_tokens:,} tokens per replica; "
        f"{b.engine.max_concurrent(w.mean_input + w.mean_output)} sequences at once",
    ]
    if r.price is not None:
        lines.append(
            f"cost      {_money(plan.cost_per_hour())}/h at {_money(r.price)}/GPU-hour; "
            f"{_money(plan.cost_per_million(), 3)} per 1M tokens, "
            f"{_money(plan.cost_per_million(output_only=True), 3)} per 1M output tokens"
        )
    lines.append(f"engine    {b.engine.vllm_serve()}")
    return "\n".join(lines)


def _flag(v: object) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def trial_line(t: Trial, labels: list[str]) -> str:
    a = t.args
    head = (
        f"{t.index:>3}  {a['max_num_seqs']:>8}  {a['max_num_batched_tokens']:>8}  "
        f"{_flag(a['enable_chunked_prefill']):>7}  {_flag(a['gpu_memory_utilization']):>4}  "
        f"{_flag(a['enable_prefix_caching']):>6}  "
    )
    c = t.capacity
    if c is None or c.at_rate is None:
        return head + (t.reason or "no rate met the SLO")
    return (
        head
        + f"{c.rate:>6.2f}  {c.at_rate.output_tps:>9,.0f}  "
        + "  ".join(f"{_ms(c.at_rate.values[lbl]) + ' ms':>9}" for lbl in labels)
    )


def trials_header(labels: list[str]) -> str:
    return "  #  max_seqs  batched  chunked  util  prefix   req/s  out tok/s  " + "  ".join(
        f"{lbl:>9}" for lbl in labels
    )


def tune_text(tuning: Tuning, labels: list[str]) -> str:
    lines = [trials_header(labels), *(trial_line(t, labels) for t in tuning.trials)]
    b = tuning.best
    if b is not None:
        first = tuning.trials[0]
        gain = f" ({b.rate / first.rate - 1:+.0%} over the derived arguments)" if first.rate else ""
        lines += [
            "",
            f"best      trial {b.index}: {b.rate:.2f} req/s per replica within the SLO{gain}",
            f"engine    {b.vllm_serve}",
        ]
    return "\n".join(lines)


def tune_plot(tuning: Tuning, path: Path, title: str) -> Path:
    """Capacity of every trial, the best one marked (PNG; needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("--plot needs matplotlib: pip install 'gantry[bench]'") from exc
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(tuning.trials) + 2), 4))
    xs = [t.index for t in tuning.trials]
    best = tuning.best.index if tuning.best else -1
    colors = ["tab:green" if t.index == best else "tab:blue" for t in tuning.trials]
    ax.bar(xs, [t.rate for t in tuning.trials], color=colors)
    ax.set_xlabel("trial")
    ax.set_ylabel("requests/s per replica within the SLO")
    ax.set_title(title)
    ax.set_xticks(xs)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["plan_text", "trial_line", "trials_header", "tune_plot", "tune_text"]
