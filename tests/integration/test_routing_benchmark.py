"""benchmarks/routing.py in its quick form, so it cannot rot: real engines, real routers,
every figure present and consistent (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT


def run_bench(tmp_path, *args: str) -> tuple[dict, str]:
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "routing.py"), "--quick", "--no-install"]
    cmd += ["--output", str(out), "--markdown", str(md), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), md.read_text()


def check(result: dict, workloads: list[str], policies: list[str]) -> None:
    assert list(result["median"]) == workloads
    for w in workloads:
        assert list(result["median"][w]) == policies
        for policy, r in result["median"][w].items():
            assert "error" not in r, (w, policy, r)
            assert r["requests"] > 0 and r["failed"] == 0
            # the engines counted what the client completed after the warm-up, and some
            # warm-up requests that finished after it
            finished = sum(r["per_engine"])
            assert r["requests"] <= finished <= r["requests"] + r["warmup_requests"], r
            assert 0 <= r["hit_rate"] <= 1 and r["balance"] >= 1
            assert r["ttft_ms"]["50"] <= r["ttft_ms"]["90"] <= r["ttft_ms"]["99"]
            assert r["clock_lag"] > 0 and r["cpu_s"]["engines"] > 0


def test_quick_routing_benchmark(tmp_path):
    policies = ["least_loaded", "kv_aware", "oracle"]
    result, md = run_bench(
        tmp_path, "--workloads", "tenants", "--policies", ",".join(policies), "--duration", "3"
    )
    check(result, ["tenants"], policies)
    oracle = result["median"]["tenants"]["oracle"]
    assert 0 <= oracle["oracle_by_cache"] <= 1
    # shared system prompts are hit once each tenant's prompt is cached somewhere
    assert result["median"]["tenants"]["kv_aware"]["hit_rate"] > 0
    for p in policies:
        assert f"| {p} |" in md


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_quick_routing_benchmark_other_workloads_and_policies(tmp_path):
    """The chat and control workloads and the other policies, two repeats (medians)."""
    policies = ["prefix", "power_of_two", "sticky_least_loaded"]
    result, _ = run_bench(
        tmp_path,
        *("--workloads", "chat,control", "--policies", ",".join(policies)),
        *("--repeats", "2", "--duration", "2"),
    )
    check(result, ["chat", "control"], policies)
    assert all(len(runs) == 2 for runs in result["runs"]["chat"].values())
