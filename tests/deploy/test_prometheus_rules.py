"""promtool checks and unit-tests the rules; every alert carries its runbook link."""

from __future__ import annotations

import subprocess

import yaml

from tests.deploy.prom import RULE_TESTS, RULES, require


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("promtool"), *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_rule_unit_tests() -> None:
    r = promtool("test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


def alerts() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_every_alert_has_severity_summary_and_runbook_url() -> None:
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names)) >= 15
    for a in alerts():
        assert a["labels"]["severity"] in {"page", "ticket", "warning"}, a  # type: ignore[index]
        ann = a["annotations"]
        assert ann["summary"] and ann["runbook_url"].startswith("docs/runbook.md#"), a  # type: ignore[index]


def test_every_alert_is_unit_tested() -> None:
    tested = {
        t["alertname"]
        for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
    }
    untested = {str(a["alert"]) for a in alerts()} - tested
    # the medium/slow burn-rate windows share the fast one's expressions and are
    # checked by promtool; the target-down alert uses Prometheus's own `up`
    assert untested <= {
        "GantryAvailabilityBurnRateMedium",
        "GantryAvailabilityBurnRateSlow",
        "GantryTTFTBurnRateMedium",
        "GantryTTFTBurnRateSlow",
        "GantryTargetDown",
        "GantryQueueSaturated",
    }, untested
