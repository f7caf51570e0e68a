"""Comparing the arms of a split (and a model with its shadow) from gateway metrics."""

from __future__ import annotations

import http.server
import threading

import pytest
from typer.testing import CliRunner

from gantry.bench.arms import quantile, shadow_arms, split_arms
from gantry.cli import app
from gantry.observability import GatewayMetrics


@pytest.mark.parametrize(
    ("q", "buckets", "want"),
    [
        (0.5, [(0.1, 0), (0.2, 10), (float("inf"), 10)], 0.15),
        (0.99, [(0.1, 5), (0.2, 10), (float("inf"), 10)], 0.1 + 0.1 * (9.9 - 5) / 5),
        (0.5, [(0.1, 0), (float("inf"), 4)], 0.1),  # above the last finite bound
        (0.5, [], None),
        (0.5, [(0.1, 0), (float("inf"), 0)], None),
    ],
)
def test_quantile_like_prometheus(q, buckets, want):
    got = quantile(q, buckets)
    assert got == pytest.approx(want) if want is not None else got is None


def metrics_text() -> str:
    m = GatewayMetrics()
    for arm, ttft, n in (("v1", 0.05, 90), ("v2", 0.3, 10)):
        for _ in range(n):
            m.split_requests.labels("chat", arm, "200").inc()
            m.split_ttft.labels("chat", arm).observe(ttft)
            m.split_duration.labels("chat", arm).observe(ttft * 4)
    m.split_requests.labels("chat", "v2", "502").inc()
    for _ in range(20):
        m.requests.labels("m", "/v1/chat/completions", "200").inc()
        m.ttft.labels("m").observe(0.05)
        m.duration.labels("m", "/v1/chat/completions").observe(0.2)
        m.shadow_requests.labels("m", "m2", "200").inc()
        m.shadow_ttft.labels("m", "m2").observe(0.5)
        m.shadow_duration.labels("m", "m2").observe(1.0)
    return m.render().decode()


def test_split_and_shadow_arms():
    text = metrics_text()
    arms = split_arms(text, "chat")
    assert set(arms) == {"v1", "v2"}
    assert arms["v1"]["completed"] == 90 and arms["v1"]["failed"] == 0
    assert arms["v2"]["completed"] == 10 and arms["v2"]["failed"] == 1
    assert arms["v1"]["median_ttft_ms"] < arms["v2"]["median_ttft_ms"]
    assert arms["v1"]["mean_ttft_ms"] == pytest.approx(50)
    s = shadow_arms(text, "m")
    assert set(s) == {"m", "shadow:m2"} and s["shadow:m2"]["mean_ttft_ms"] == pytest.approx(500)


def test_cli_compares_arms_from_a_gateway():
    text = metrics_text().encode()

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/metrics" else 404)
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *a: object) -> None:
            return None

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        r = CliRunner().invoke(app, ["bench", "compare", "--gateway", url, "--split", "chat"])
        assert r.exit_code == 0, r.output
        assert "v1 vs v2" in r.output and "TTFT" in r.output
        r = CliRunner().invoke(app, ["bench", "compare", "--gateway", url, "--split", "nope"])
        assert r.exit_code == 2 and "need 2" in r.output
        r = CliRunner().invoke(app, ["bench", "compare"])
        assert r.exit_code == 2
    finally:
        srv.shutdown()
