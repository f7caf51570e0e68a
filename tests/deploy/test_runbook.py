"""docs/runbook.md: every alert has its section, every ``gantry`` command in it parses
with the options it is given, and every ``curl`` against ``$GANTRY`` or an engine runs,
as written, against a real gateway and simulated engine with a 2xx answer."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import yaml

from gantry.netutil import free_port
from tests.deploy.prom import RULES
from tests.helpers import ROOT, gantry_cmd, gateway, new_key, sim, wait_key_active

RUNBOOK = ROOT / "docs" / "runbook.md"


def anchors() -> set[str]:
    heads = re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in heads}


def code_lines() -> list[str]:
    """Command lines from fenced blocks and from inline code."""
    text = RUNBOOK.read_text()
    lines = [
        ln.strip()
        for block in re.findall(r"```(?:bash)?\n(.*?)```", text, re.S)
        for ln in block.splitlines()
    ]
    lines += re.findall(r"`((?:gantry|curl) [^`]+)`", text)
    return [ln.split("  #")[0].strip() for ln in lines if ln.strip()]


def test_every_alert_has_a_section() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    urls = {r["annotations"]["runbook_url"] for g in groups for r in g["rules"] if "alert" in r}
    missing = {u for u in urls if u.split("#")[1] not in anchors()}
    assert not missing
    for link in re.findall(r"\]\(#([\w-]+)\)", RUNBOOK.read_text()):  # links inside
        assert link in anchors(), link


def gantry_commands() -> list[list[str]]:
    cmds = []
    for ln in code_lines():
        if ln.startswith("gantry "):
            cmds.append(shlex.split(ln)[1:])
    return cmds


def test_gantry_commands_parse_with_their_options() -> None:
    cmds = gantry_commands()
    assert len(cmds) >= 8
    helps: dict[tuple[str, ...], str] = {}
    for words in cmds:
        sub = tuple(w for w in words[:2] if re.fullmatch(r"[a-z]+", w) and w != "gantry")
        if sub not in helps:
            r = subprocess.run(gantry_cmd(*sub, "--help"), capture_output=True, text=True)
            if r.returncode != 0 and len(sub) == 2:  # a positional argument, not a verb
                sub = sub[:1]
                r = subprocess.run(gantry_cmd(*sub, "--help"), capture_output=True, text=True)
            assert r.returncode == 0, f"gantry {' '.join(sub)}: {r.stderr}"
            helps[sub] = r.stdout
        for opt in (w.split("=")[0] for w in words if w.startswith("--")):
            assert opt in helps[sub], f"gantry {' '.join(words)}: no {opt}"


def curl_lines() -> list[str]:
    return sorted({ln for ln in code_lines() if ln.startswith("curl ") and "NODE" not in ln})


def test_curl_commands_answer_2xx_against_a_real_gateway(tmp_path: Path) -> None:
    lines = curl_lines()
    assert len(lines) >= 8
    port = free_port()
    db = f"sqlite:///{tmp_path}/gantry-{port}.db"
    admin, _ = new_key(db, "--tenant", "ops", "--role", "admin")
    with sim(tmp_path, "--profile", "instant", "--served-model-name", "m") as engine:
        cfg = tmp_path / "gantry.yaml"
        settings = {
            "engines": [{"url": engine.url, "name": "engine-0"}],
            "security": {"metrics_public": True},  # as deploy/ configures it
        }
        cfg.write_text(yaml.safe_dump(settings))
        with gateway(tmp_path, "-c", str(cfg), port=port, secure=True) as gw:
            wait_key_active(gw.url, admin)
            env = {**os.environ, "GANTRY": gw.url, "ADMIN_KEY": admin}
            for ln in lines:
                cmd = ln.replace("ENGINE:8000", engine.url[7:])
                cmd = cmd.split(" | ")[0] + " -o /dev/null -w '%{http_code}'"
                r = subprocess.run(
                    ["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=30
                )
                assert r.returncode == 0 and r.stdout.startswith("2"), f"{ln}: {r.stdout}"
