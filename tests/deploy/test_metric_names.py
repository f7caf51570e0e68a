"""Every metric that a dashboard panel, an alert or a recording rule names is one a
running gantry exports: a gateway, the simulated engine behind it and the supervisor
(``gantry engine --simulate``) are started and scraped; their ``# TYPE`` lines say which
families exist, even those with no sample yet."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gantry.netutil import free_port
from tests.deploy.prom import RULES
from tests.helpers import ROOT, gantry_cmd, gateway, run_proc, sim

DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
SCALER = ROOT / "deploy/k8s/base/gateway.yaml"
PROMETHEUS_OWN = {"up"}  # made by Prometheus for every target
SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "bool", "offset",
            "group_left", "group_right", "inf", "nan"}  # fmt: skip


def exported(text: str) -> set[str]:
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\w+)$", text, re.M):
        names.update(name + s for s in SUFFIXES.get(kind, ("",)))
    return names


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    found = set()
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        if m.group(2) is None and m.group(1) not in KEYWORDS:
            found.add(m.group(1))
    return found


def rule_exprs() -> tuple[list[str], set[str]]:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    return [r["expr"] for r in rules], {r["record"] for r in rules if "record" in r}


def panel_exprs(path: Path) -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for p in panels:
            yield from (t["expr"] for t in p.get("targets", []))
            yield from walk(p.get("panels", []))

    return list(walk(json.loads(path.read_text())["panels"]))


def scaler_exprs() -> list[str]:
    docs = yaml.safe_load_all(SCALER.read_text())
    so = next(d for d in docs if d["kind"] == "ScaledObject")
    return [t["metadata"]["query"] for t in so["spec"]["triggers"]]


def test_the_name_finder() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (model, le) (rate(a_bucket{le="1.0"}[5m])))'
        " / on(x) group_left b:rec > 5 * c offset 1h and bool up"
    ) == {"a_bucket", "b:rec", "c", "up"}


@pytest.fixture(scope="module")
def exported_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    tmp = tmp_path_factory.mktemp("names")
    status, first = free_port(), free_port()
    supervisor = gantry_cmd(
        "engine", "--simulate", "--model", "qwen2.5-1.5b-instruct", "--no-warmup",
        "--gpu-info", str(ROOT / "tests/fixtures/gpus/l4x2.json"),
        "--port", str(first), "--status-port", str(status),
    )  # fmt: skip
    with (
        sim(tmp, "--profile", "instant", "--served-model-name", "m") as engine,
        gateway(tmp, "--engine", engine.url) as gw,
        run_proc(supervisor, status, tmp) as sup,
    ):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        assert httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30).is_success
        return set().union(
            *(exported(httpx.get(p.url + "/metrics", timeout=10).text) for p in (gw, engine, sup))
        )


def test_every_name_in_rules_dashboards_and_the_scaler_is_exported(
    exported_names: set[str],
) -> None:
    exprs, recorded = rule_exprs()
    sources = {"rules": exprs, "scaler": scaler_exprs()}
    sources |= {p.name: panel_exprs(p) for p in DASHBOARDS}
    known = exported_names | recorded | PROMETHEUS_OWN
    missing = {
        f"{src}: {name}"
        for src, lst in sources.items()
        for e in lst
        for name in metric_names(e) - known
    }
    assert not missing, sorted(missing)
    assert all(sources.values()) and len(DASHBOARDS) == 3
