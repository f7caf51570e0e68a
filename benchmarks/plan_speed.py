"""Virtual-time speed: simulated seconds per wall-clock second, and what a plan costs.

    python benchmarks/plan_speed.py [--requests 1000] [--rate 20]

One virtual run of Llama-3.1-8B on an H100 (1,000 tokens in, 200 out, Poisson
arrivals) at a few rates, then a whole `gantry plan` (TP 1, 2, 4, 8). The baseline is
the same load in real time: a run of D simulated seconds takes D wall seconds in
`gantry sim`, so the speed-up over real time is the simulated/wall ratio itself.
"""

from __future__ import annotations

import argparse
import time

from gantry.planner import PlanRequest, make_plan, parse_slo, plan_engine, synthetic
from gantry.planner.capacity import run
from gantry.sim.virtual import Limits
from gantry.supervisor.gpus import table_entry
from gantry.supervisor.model import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--rates", default="5,10,20")
    args = ap.parse_args()
    model, gpu = load_model("llama-3.1-8b"), table_entry("H100")
    work = synthetic(args.requests, 1000, 200)
    engine = plan_engine(model, gpu, 1)
    print(f"{args.requests} requests, 1000 in / 200 out, llama-3.1-8b on H100 (TP 1)")
    print(f"{'rate':>6} {'simulated s':>12} {'wall s':>8} {'sim s / wall s':>15} {'steps/s':>9}")
    for rate in (float(r) for r in args.rates.split(",")):
        res = run(engine.resolved, work, rate, Limits())
        print(
            f"{rate:>6g} {res.duration:>12.1f} {res.wall_seconds:>8.2f} {res.speed:>15.1f} "
            f"{res.steps / res.wall_seconds:>9.0f}"
        )
    t = time.perf_counter()
    slo = parse_slo("ttft_p90=500ms,tpot_p90=50ms")
    plan = make_plan(PlanRequest(model, gpu, 20.0, synthetic(300, 1000, 200), slo))
    wall = time.perf_counter() - t
    sim = sum(o.capacity.sim_seconds for o in plan.options if o.capacity)
    print(
        f"gantry plan (TP 1/2/4/8, 300 requests a run): {wall:.1f} s wall for {sim:.0f} "
        f"simulated s of load ({sim / wall:.0f}x real time)"
    )


if __name__ == "__main__":
    main()
