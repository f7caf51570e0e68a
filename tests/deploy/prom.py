"""Helpers for tests that use Prometheus's own tools (Debian package ``prometheus``)."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import ROOT

RULES = ROOT / "deploy" / "prometheus" / "gantry-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "rules_test.yml"


def require(tool: str) -> str:
    """The path of ``tool``, or skip naming the package (.ci/run installs it)."""
    exe = shutil.which(tool)
    if exe is None:
        pytest.skip(f"{tool} not installed (apt-get install prometheus)")
    return exe
