"""The plan and the tuning run as text tables (the JSON forms are in plan.py, tune.py)."""

from __future__ import annotations

from gantry.planner.plan import Plan


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


__all__ = ["plan_text"]
