"""`gantry bench` itself: is the client ever the bottleneck, and does it measure right?

    python benchmarks/bench_client.py

1. Throughput ceiling: one bench process, all requests at once with a concurrency cap,
   against the simulator's `instant` profile and against the zero-latency engine.
2. Accuracy: at moderate load on a realistic profile, bench's mean TTFT and ITL next to
   the simulator's own `vllm:time_to_first_token_seconds` / `inter_token_latency_seconds`
   histograms (sum/count over the same run).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from _common import cpu_seconds, gantry, process, table

from gantry.netutil import free_port

HERE = Path(__file__).parent


def bench(url: str, *args: str) -> tuple[dict[str, float], float]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = gantry("bench", "--no-progress", "--url", url, "--output", out, *args)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cpu = 0.0
    while proc.poll() is None:
        try:
            cpu = cpu_seconds(proc.pid)
        except OSError:
            break
        try:
            proc.wait(0.2)
        except subprocess.TimeoutExpired:
            pass
    if proc.returncode:
        sys.exit(proc.stderr.read().decode() if proc.stderr else "bench failed")
    return json.loads(Path(out).read_text()), cpu


def hist_mean(text: str, name: str) -> tuple[float, float]:
    s = c = 0.0
    for line in text.splitlines():
        if line.startswith(name + "_sum"):
            s += float(line.rsplit(" ", 1)[1])
        elif line.startswith(name + "_count"):
            c += float(line.rsplit(" ", 1)[1])
    return s, c


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics") as r:
        return r.read().decode()


def main() -> None:
    rows = [("target", "requests", "req/s sustained", "output tok/s", "bench CPU s", "failed")]
    load = (
        "--num-prompts",
        "6000",
        "--input-len",
        "16",
        "--output-len",
        "8",
        "--max-concurrency",
        "256",
    )
    port = free_port()
    sim = gantry(
        "sim",
        "--port",
        str(port),
        "--profile",
        "instant",
        "--served-model-name",
        "m",
        "--gpu",
        "H100",
        "--log-level",
        "warning",
    )
    with process(sim, f"http://127.0.0.1:{port}/health", cpu=1):
        r, cpu = bench(f"http://127.0.0.1:{port}/v1", *load)
        rows.append(
            (
                "sim, instant profile",
                "6000",
                f"{r['request_throughput']:,.0f}",
                f"{r['output_throughput']:,.0f}",
                f"{cpu:.1f}",
                str(r["failed"]),
            )
        )
    port = free_port()
    zero = [sys.executable, str(HERE / "zero_engine.py"), "--port", str(port), "--chunks", "8"]
    with process(zero, f"http://127.0.0.1:{port}/health", cpu=1):
        r, cpu = bench(f"http://127.0.0.1:{port}/v1", "--model", "zero", *load)
        rows.append(
            (
                "zero-latency engine",
                "6000",
                f"{r['request_throughput']:,.0f}",
                f"{r['output_throughput']:,.0f}",
                f"{cpu:.1f}",
                str(r["failed"]),
            )
        )
    print("bench client ceiling (bench process unpinned; engine pinned to core 1)")
    print(table(rows))

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    sim = gantry("sim", "--port", str(port), "--served-model-name", "m", "--log-level", "warning")
    with process(sim, base + "/health"):
        before = scrape(base)
        r, _ = bench(
            base,
            "--num-prompts",
            "240",
            "--input-len",
            "256",
            "--output-len",
            "64",
            "--rate",
            "8",
            "--seed",
            "1",
        )
        after = scrape(base)
    rows = [("metric", "bench (client)", "simulator histogram", "difference")]
    for name, key in (
        ("vllm:time_to_first_token_seconds", "mean_ttft_ms"),
        ("vllm:inter_token_latency_seconds", "mean_itl_ms"),
    ):
        s0, c0 = hist_mean(before, name)
        s1, c1 = hist_mean(after, name)
        server = (s1 - s0) / (c1 - c0) * 1000
        client = r[key]
        rows.append(
            (
                key,
                f"{client:.2f} ms",
                f"{server:.2f} ms",
                f"{(client - server) / server * 100:+.1f}%",
            )
        )
    print("\naccuracy: Qwen2.5-1.5B on a simulated L4, 8 req/s, 256 in / 64 out, 240 requests")
    print(table(rows))


if __name__ == "__main__":
    main()
