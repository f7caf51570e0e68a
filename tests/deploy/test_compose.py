"""deploy/compose: the file is valid Compose (``docker-compose config`` checks it against
the Compose schema), secrets come only from the environment, and the pieces agree."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, gantry_cmd

COMPOSE = ROOT / "deploy" / "compose"
SECRETS = {"POSTGRES_PASSWORD": "p", "REDIS_PASSWORD": "r", "GRAFANA_ADMIN_PASSWORD": "g"}


def compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [exe, "-f", str(COMPOSE / "compose.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
        cwd="/",
    )


def test_compose_config_is_valid_with_and_without_the_gpu_profile() -> None:
    r = compose("config", "-q", env=SECRETS)
    assert r.returncode == 0, r.stderr
    r = compose("config", "--services", env=SECRETS)
    assert set(r.stdout.split()) - {"vllm"} == {
        "gateway-1", "gateway-2", "engine-0", "engine-1", "redis", "postgres",
        "prometheus", "grafana", "otel-collector",
    }  # fmt: skip
    r = compose("--profile", "gpu", "config", "--services", env=SECRETS)
    assert "vllm" in r.stdout.split()


def test_passwords_must_come_from_the_environment() -> None:
    r = compose("config", "-q", env={})
    assert r.returncode != 0 and "set POSTGRES_PASSWORD in deploy/compose/.env" in r.stderr
    text = "\n".join(p.read_text() for p in COMPOSE.rglob("*.y*ml"))
    values = re.findall(r"(?:PASSWORD|_URL)\w*: *(\S.*)", text)
    assert len(values) >= 6
    for value in values:  # each password or URL with one is interpolated, not written
        assert "$" in value or "@" not in value, value


def test_rendered_services_share_stores_and_run_read_only() -> None:
    cfg = yaml.safe_load(compose("--profile", "gpu", "config", env=SECRETS).stdout)
    svcs = cfg["services"]
    for gw in ("gateway-1", "gateway-2"):
        env = svcs[gw]["environment"]
        assert env["GANTRY_SECURITY__DATABASE_URL"] == "postgresql://gantry:p@postgres:5432/gantry"
        assert env["GANTRY_RATELIMIT__REDIS_URL"] == "redis://:r@redis:6379/0"
        assert svcs[gw]["read_only"] is True
    assert svcs["engine-0"]["command"][0] == "sim"
    assert svcs["vllm"]["command"][0] == "engine" and svcs["vllm"]["profiles"] == ["gpu"]
    devices = svcs["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


@pytest.mark.parametrize("name", ["gantry.yaml", "gantry-gpu.yaml"])
def test_gateway_configs_pass_gantry_config_check(name: str) -> None:
    r = subprocess.run(
        gantry_cmd("config", "check", str(COMPOSE / name)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def test_prometheus_scrapes_every_gantry_service_and_grafana_finds_the_dashboards() -> None:
    prom = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    targets = {
        t.split(":")[0] for job in prom["scrape_configs"] for sc in job["static_configs"]
        for t in sc["targets"]
    }  # fmt: skip
    assert {"gateway-1", "gateway-2", "engine-0", "engine-1", "vllm"} <= targets
    compose_text = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    mounts = compose_text["services"]["grafana"]["volumes"]
    dash = next(m for m in mounts if m.startswith("../grafana/dashboards:"))
    provider = yaml.safe_load(
        (COMPOSE / "grafana/provisioning/dashboards/gantry.yaml").read_text()
    )["providers"][0]
    assert dash.split(":")[1] == provider["options"]["path"]
    assert any(Path(COMPOSE / "../grafana/dashboards").glob("*.json"))
