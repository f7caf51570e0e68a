"""The chaos suite, short form (the long form: benchmarks/chaos.py)."""

from __future__ import annotations

import pytest

from gantry.bench.chaos_suite import SCENARIOS, run_scenario

pytestmark = pytest.mark.slow
RATES = {"kill": 30.0, "hang": 30.0, "errors": 30.0, "overload": 120.0, "sigterm": 30.0}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_chaos_scenario(name):
    out = run_scenario(name, duration=6.0, rate=RATES[name])
    t = out.tally
    assert t.sent > 20
    assert t.lost == 0, t.lost_reasons
    assert t.ok > 0
    assert all(out.checks.values()), out.checks
