"""Gateway overhead: one gateway worker pinned to core 0 in front of a zero-latency
engine; load from wrk on core 1; the engine hit directly in the same run as baseline.

    python benchmarks/gateway_overhead.py [--duration 10] [--connections 64]

Needs `wrk` (Debian package). Prints requests/s and p50/p99 for non-streaming chat at
concurrency 64, and streams/s for 100-chunk streamed responses, direct and through the
gateway, with the ratio.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import gantry, process, table

from gantry.netutil import free_port

HERE = Path(__file__).parent
UNARY = '{"model":"zero","messages":[{"role":"user","content":"hi"}],"max_tokens":1}'
STREAM = (
    '{"model":"zero","messages":[{"role":"user","content":"hi"}],"max_tokens":100,"stream":true}'
)


def lua(body: str) -> str:
    return (
        f'wrk.method = "POST"\nwrk.body = {body!r}\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )


def run_wrk(url: str, body: str, duration: int, conns: int, cpu: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua(body))
    out = subprocess.run(
        [
            "taskset",
            "-c",
            str(cpu),
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{duration}s",
            "--latency",
            "-s",
            f.name,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return float(m.group(1)) * scale

    return {
        "rps": rps,
        "p50": pct("50"),
        "p99": pct("99"),
        "errors": float(errors.group(1)) if errors else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument(
        "--request-logs",
        action="store_true",
        help="keep one JSON log line per request (the default in production)",
    )
    a = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("gateway_overhead: needs wrk (apt-get install wrk)")
    eport, gport = free_port(), free_port()
    engine = [sys.executable, str(HERE / "zero_engine.py"), "--port", str(eport)]
    gw = gantry("serve", "--engine", f"http://127.0.0.1:{eport}", "--port", str(gport))
    env = {
        "GANTRY_LOGGING__LEVEL": "info" if a.request_logs else "warning",
        "GANTRY_HEALTH__SCRAPE_METRICS": "false",
        "GANTRY_SECURITY__AUTH": "off",
        "GANTRY_LEDGER__ENABLED": "false",
    }
    rows = [
        (
            "case",
            "direct req/s",
            "gateway req/s",
            "ratio",
            "gw p50 ms",
            "gw p99 ms",
            "direct p50 ms",
            "errors",
        )
    ]
    with (
        process(engine, f"http://127.0.0.1:{eport}/health", cpu=1),
        process(gw, f"http://127.0.0.1:{gport}/readyz", cpu=0, env=env),
    ):
        for name, body in (
            ("chat, non-streaming, c64", UNARY),
            ("chat, 100-chunk stream, c64", STREAM),
        ):
            path = "/v1/chat/completions"
            run_wrk(f"http://127.0.0.1:{gport}{path}", body, 2, a.connections, 1)  # warm-up
            d = run_wrk(f"http://127.0.0.1:{eport}{path}", body, a.duration, a.connections, 1)
            g = run_wrk(f"http://127.0.0.1:{gport}{path}", body, a.duration, a.connections, 1)
            rows.append(
                (
                    name,
                    f"{d['rps']:,.0f}",
                    f"{g['rps']:,.0f}",
                    f"{g['rps'] / d['rps']:.2f}",
                    f"{g['p50']:.2f}",
                    f"{g['p99']:.2f}",
                    f"{d['p50']:.2f}",
                    f"{g['errors']:.0f}",
                )
            )
    print("gateway overhead: 1 gateway worker on core 0; zero-latency engine and wrk on core 1")
    print(table(rows))


if __name__ == "__main__":
    main()
