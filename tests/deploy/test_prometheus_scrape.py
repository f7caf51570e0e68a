"""A real Prometheus scrapes a running gateway and simulated engine and evaluates the
rules; a recording rule's value is read back through its HTTP API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gantry.netutil import free_port
from tests.deploy.prom import RULES, require
from tests.helpers import Proc, gateway, run_proc, sim, wait_until


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Proc, Proc, Proc]]:
    exe = require("prometheus")
    with (
        sim(tmp_path, "--profile", "instant", "--served-model-name", "m") as engine,
        gateway(tmp_path, "--engine", engine.url) as gw,
    ):
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "gantry-gateway", "static_configs": [{"targets": [gw.url[7:]]}]},
                {
                    "job_name": "gantry-engine",
                    "static_configs": [{"targets": [engine.url[7:]]}],
                },
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        args = [
            exe,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with run_proc(args, port, tmp_path, health="/-/ready") as prom:
            yield prom, gw, engine


def query(prom: Proc, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(prom.url + "/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]  # type: ignore[no-any-return]


def test_prometheus_scrapes_gantry_and_records_the_request_rate(
    prometheus: tuple[Proc, Proc, Proc],
) -> None:
    prom, gw, _ = prometheus
    wait_until(lambda: len([s for s in query(prom, "up == 1")]) == 2, 60, "both targets scraped")

    def send_and_read() -> list[dict[str, Any]]:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        assert httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30).is_success
        return [
            s for s in query(prom, 'gantry:requests:rate5m{model="m"}') if float(s["value"][1]) > 0
        ]

    # requests keep flowing until the rule has two scrapes with a difference to rate
    samples = wait_until(send_and_read, 90, "gantry:requests:rate5m above 0")
    assert samples[0]["metric"] == {"__name__": "gantry:requests:rate5m", "model": "m"}
    # the engine's own series arrive too: the dashboards read them
    assert query(prom, "vllm:num_requests_running")
