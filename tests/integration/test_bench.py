"""`gantry bench` against simulator subprocesses."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from tests.helpers import gantry_cmd, metric_value, sim


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gantry_cmd("bench", "--no-progress", *args), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def bench_sim(module_tmp):
    with sim(module_tmp, "--speedup", "20", "--served-model-name", "m", "--enable-admin") as p:
        yield p


def test_run_writes_vllm_compatible_json(bench_sim, tmp_path):
    out = tmp_path / "r.json"
    r = bench(
        "--url",
        bench_sim.url + "/v1",
        "--num-prompts",
        "30",
        "--input-len",
        "64",
        "--output-len",
        "16",
        "--rate",
        "50",
        "--slo",
        "ttft=2s,tpot=1s",
        "--output",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "Successful requests" in r.stdout
    res = json.loads(out.read_text())
    for key in (
        "date",
        "endpoint_type",
        "backend",
        "model_id",
        "num_prompts",
        "request_rate",
        "burstiness",
        "max_concurrency",
        "duration",
        "completed",
        "failed",
        "total_input_tokens",
        "total_output_tokens",
        "request_throughput",
        "request_goodput",
        "output_throughput",
        "total_token_throughput",
        "max_output_tokens_per_s",
        "max_concurrent_requests",
        "mean_ttft_ms",
        "median_ttft_ms",
        "std_ttft_ms",
        "p99_ttft_ms",
        "mean_tpot_ms",
        "p99_itl_ms",
        "mean_e2el_ms",
        "p90_e2el_ms",
    ):
        assert key in res, key
    assert res["completed"] == 30 and res["total_output_tokens"] == 30 * 16
    assert res["model_id"] == "m" and res["request_rate"] == 50.0
    assert res["total_input_tokens"] > 30 * 64


PREFIX_CASES = [
    # 2 prefixes of 200 words x 4 questions, one request at a time so that each prefix is
    # cached before its next question: 3 of every 4 requests reuse >= 12 full blocks.
    (
        "shared-prefix",
        ["--num-prefixes", "2", "--prefix-len", "200", "--max-concurrency", "1"],
        8,
        2 * 3 * 12 * 16,
    ),
    # 8 sessions x 3 turns of 64 words: turn 2 resends turn 1 (>= 64 tokens), turn 3
    # resends turn 2's whole prompt (>= 128 tokens), and the engine has them cached.
    ("multi-turn", ["--turns", "3", "--input-len", "64"], 8 * 3, 8 * (64 + 128)),
]


@pytest.mark.parametrize(
    ("dataset", "args", "requests", "min_hit_tokens"),
    PREFIX_CASES,
    ids=[c[0] for c in PREFIX_CASES],
)
def test_prefix_and_session_datasets(bench_sim, tmp_path, dataset, args, requests, min_hit_tokens):
    def hits() -> float:
        text = httpx.get(bench_sim.url + "/metrics").text
        return metric_value(text, "vllm:prefix_cache_hits_total")

    before = hits()
    out = tmp_path / "r.json"
    r = bench(
        "--url",
        bench_sim.url,
        "--dataset",
        dataset,
        "--num-prompts",
        "8",
        "--output-len",
        "8",
        "--endpoint",
        "completions",
        "--output",
        str(out),
        *args,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["dataset"] == dataset
    assert res["completed"] == requests and res["failed"] == 0
    assert hits() - before >= min_hit_tokens


def test_faults_are_counted_not_crashed_on(bench_sim, tmp_path):
    httpx.post(bench_sim.url + "/sim/faults", json={"reset": True, "error_rate": {"503": 0.5}})
    try:
        out = tmp_path / "f.json"
        r = bench(
            "--url", bench_sim.url, "--num-prompts", "40", "--output-len", "4", "--output", str(out)
        )
    finally:
        httpx.post(bench_sim.url + "/sim/faults", json={"reset": True})
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["failed"] > 5 and res["completed"] > 5
    assert res["errors_by_status"]["503"] == res["failed"]


def test_compare_and_sweep(bench_sim, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path, rate in ((a, "5"), (b, "40")):
        r = bench(
            "--url",
            bench_sim.url,
            "--num-prompts",
            "20",
            "--output-len",
            "8",
            "--rate",
            rate,
            "--output",
            str(path),
        )
        assert r.returncode == 0, r.stderr
    r = subprocess.run(
        gantry_cmd("bench", "compare", str(a), str(b), "--slo", "ttft=1ms", "--strict"),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "FAIL" in r.stdout and "B/A" in r.stdout
    sweep_out = tmp_path / "s.json"
    r = bench(
        "--url",
        bench_sim.url,
        "--num-prompts",
        "15",
        "--output-len",
        "8",
        "--slo",
        "ttft=5s",
        "--output",
        str(sweep_out),
        "--plot-dir",
        str(tmp_path),
        "sweep",
        "--rates",
        "5,20",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(sweep_out.read_text())
    assert [run["request_rate"] for run in res["runs"]] == [5.0, 20.0]
    assert res["best_rate"] == 20.0
    assert (tmp_path / "sweep.png").exists()


def test_plots(bench_sim, tmp_path):
    pytest.importorskip("matplotlib")
    r = bench(
        "--url",
        bench_sim.url,
        "--num-prompts",
        "10",
        "--output-len",
        "8",
        "--plot-dir",
        str(tmp_path / "plots"),
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "plots" / "latency_cdf.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "over_time.png").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--url", "http://127.0.0.1:9"], "cannot reach"),
        (["--url", "ftp://x"], "--url must be an http(s) URL"),
        (["--url", "http://127.0.0.1:9", "--slo", "ttft=soon"], "cannot parse SLO"),
        (["--url", "http://127.0.0.1:9", "--dataset", "sharegpt"], "needs --dataset-path"),
        (["--url", "http://127.0.0.1:9", "--dataset", "nope"], "unknown dataset"),
        (["--url", "http://127.0.0.1:9", "--rate", "fast"], "--rate must be"),
        ([], "--url is required"),
    ],
)
def test_bad_input_is_one_line(args, needle):
    r = bench(*args)
    assert r.returncode == 2
    assert r.stderr.startswith("gantry: error:") and needle in r.stderr
    assert r.stderr.count("\n") == 1


def test_bad_dataset_files(tmp_path):
    notjson = tmp_path / "x.json"
    notjson.write_text("this is not json")
    r = bench(
        "--url",
        "http://127.0.0.1:9",
        "--model",
        "m",
        "--dataset",
        "sharegpt",
        "--dataset-path",
        str(notjson),
    )
    assert r.returncode == 2 and "not valid JSON" in r.stderr
    r = subprocess.run(
        gantry_cmd("bench", "compare", str(notjson), str(notjson)), capture_output=True, text=True
    )
    assert r.returncode == 2 and "not valid JSON" in r.stderr
