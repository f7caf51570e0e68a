"""The chaos suite, long form: five scenarios of steady load through a gateway in front
of three simulated engines while things break.

    python benchmarks/chaos.py [--duration 40] [--only kill,hang]

Prints, per scenario: requests sent, succeeded, shed (429/503 + Retry-After), failed
(error answers; for streams an error event and a clean end), lost (accepted but never
properly answered: must be 0), p99 latency of successes, and the gateway's peak memory.
"""

from __future__ import annotations

import argparse

from _common import table

from gantry.bench.chaos import HEADER
from gantry.bench.chaos_suite import SCENARIOS, run_scenario

RATES = {"kill": 30.0, "hang": 30.0, "errors": 30.0, "overload": 120.0, "sigterm": 30.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=40.0)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    a = ap.parse_args()
    rows = [HEADER]
    checks = []
    for name in a.only.split(","):
        out = run_scenario(name, duration=a.duration, rate=RATES[name])
        rows.append(out.tally.row(out.name))
        checks += [f"  {'ok  ' if ok else 'FAIL'} {out.name}: {c}" for c, ok in out.checks.items()]
        if out.tally.lost_reasons:
            checks.append(f"  lost in {out.name}: {out.tally.lost_reasons}")
    print(f"chaos suite: 3 simulated engines, 1 gateway, {a.duration:.0f} s per scenario")
    print(table(rows))
    print("\n".join(checks))


if __name__ == "__main__":
    main()
