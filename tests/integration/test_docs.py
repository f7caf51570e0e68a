"""The documentation's examples, run as a reader would run them.

A fenced block in README.md or docs/*.md that follows a line ``<!-- runnable -->``
runs on its own; one that follows ``<!-- runnable: gateway -->`` runs against a gateway
this module starts (the embedded default, authentication on), with ``OPENAI_API_KEY``
holding a key for it, ``OPENAI_BASE_URL`` pointing at it and ``127.0.0.1:8080`` in the
block rewritten to its port.

* ``bash`` runs under ``bash -euo pipefail``, ``python`` with the interpreter running the
  tests, both in a temporary directory that looks like a checkout after ``make serve``
  (``.venv`` is the environment running the tests, its ``bin`` first on ``PATH``) and
  with a temporary ``GANTRY_SECURITY__DATABASE_URL``;
* ``yaml`` is written to ``gantry.yaml`` and must pass ``gantry config check``.

Every ``GANTRY_*=value`` example in the same files must also be a setting that loads.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gantry.config import GatewayConfig, load_config
from tests.helpers import ROOT, Proc, gantry_cmd, gateway

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
MARKER = re.compile(r"<!-- runnable(?::\s*(?P<mode>[\w-]+))? -->")
FENCE = re.compile(r"```(?P<lang>\w*)")
MODES = {None: "standalone", "gateway": "gateway"}
SUFFIX = {"bash": ".sh", "python": ".py", "yaml": ".yaml"}
DOCS_PORT = "127.0.0.1:8080"


@dataclass(frozen=True, slots=True)
class Block:
    path: Path
    line: int  # of the opening fence
    lang: str
    mode: str | None
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:L{self.line}"


def runnable_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            marker = MARKER.fullmatch(line.strip())
            if marker is None:
                continue
            fence = FENCE.fullmatch(lines[i + 1]) if i + 1 < len(lines) else None
            lang = fence["lang"] if fence else "(no fenced block after the marker)"
            end = next((j for j in range(i + 2, len(lines)) if lines[j] == "```"), i + 1)
            code = "".join(f"{x}\n" for x in lines[i + 2 : end])
            blocks.append(Block(path, i + 2, lang, marker["mode"], code))
    return blocks


BLOCKS = runnable_blocks()


def test_markers_are_well_formed():
    assert BLOCKS, "no runnable blocks found"
    for b in BLOCKS:
        assert b.lang in SUFFIX, f"{b.id}: cannot run a {b.lang!r} block"
        assert b.mode in MODES, f"{b.id}: unknown mode {b.mode!r}"
        assert b.code.strip(), f"{b.id}: empty block"
    assert len({b.id for b in BLOCKS}) == len(BLOCKS)


@dataclass(frozen=True, slots=True)
class DocsGateway:
    proc: Proc
    key: str
    database_url: str


@pytest.fixture(scope="module")
def docs_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocsGateway]:
    """The embedded default with auth on, one instant engine to keep the module quick."""
    tmp = tmp_path_factory.mktemp("docs-gateway")
    db = f"sqlite:///{tmp}/gantry.db"
    env = {
        "GANTRY_SECURITY__DATABASE_URL": db,
        "GANTRY_EMBEDDED__ENGINES": "1",
        "GANTRY_EMBEDDED__PROFILE": "instant",
        "GANTRY_BATCHES__STORAGE_DIR": f"{tmp}/files",
        "GANTRY_BATCHES__POLL_INTERVAL_S": "0.2",
    }
    # enterprise: the examples' load stays clear of per-key limits, which are not tested here
    key = subprocess.run(
        gantry_cmd("keys", "create", "--tenant", "docs", "--tier", "enterprise"),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=True,
    ).stdout.strip()
    with gateway(tmp, secure=True, env=env, timeout=60) as gw:  # waits for /readyz
        yield DocsGateway(gw, key, db)


def reader_env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GANTRY_", "OPENAI_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["GANTRY_SECURITY__DATABASE_URL"] = f"sqlite:///{workdir}/gantry.db"
    return {**env, **extra}


def command(block: Block, script: Path) -> list[str]:
    if block.lang == "bash":
        return ["bash", "-euo", "pipefail", str(script)]
    if block.lang == "python":
        return [sys.executable, str(script)]
    return [str(BIN / "gantry"), "config", "check", script.name]


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest):
    assert block.lang in SUFFIX and block.mode in MODES
    (tmp_path / ".venv").symlink_to(BIN.parent, target_is_directory=True)
    code, env = block.code, reader_env(tmp_path)
    if MODES[block.mode] == "gateway":
        gw: DocsGateway = request.getfixturevalue("docs_gateway")
        code = code.replace(DOCS_PORT, f"127.0.0.1:{gw.proc.port}")
        env.update(
            OPENAI_API_KEY=gw.key,
            OPENAI_BASE_URL=f"{gw.proc.url}/v1",
            GANTRY_SECURITY__DATABASE_URL=gw.database_url,
        )
    script = tmp_path / ("gantry.yaml" if block.lang == "yaml" else f"block{SUFFIX[block.lang]}")
    script.write_text(code)
    r = subprocess.run(
        command(block, script), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, (
        f"{block.id} exited with {r.returncode}\n--- block\n{code}--- stdout\n{r.stdout}"
        f"--- stderr\n{r.stderr}"
    )


ENV_EXAMPLE = re.compile(r"\b(GANTRY_[A-Z0-9_]+)=([^\s`'\",)]+)")


def env_examples() -> list[tuple[str, str, str]]:
    out = []
    for path in DOCS:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in ENV_EXAMPLE.finditer(line):
                out.append((f"{path.relative_to(ROOT)}:L{n}", m[1], m[2]))
    return out


ENV_EXAMPLES = env_examples()


@pytest.mark.parametrize(
    ("where", "name", "value"), ENV_EXAMPLES, ids=[f"{w}:{n}" for w, n, _ in ENV_EXAMPLES]
)
def test_env_example_is_a_setting(where, name, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gantry.yaml").write_text("port: 8080\n")  # for GANTRY_CONFIG=gantry.yaml
    cfg = load_config(env={name: value})
    if name == "GANTRY_CONFIG":
        return
    node = cfg.model_dump(mode="json", by_alias=True)
    for part in name.removeprefix("GANTRY_").lower().split("__"):
        node = node[part]
    default = GatewayConfig().model_dump(mode="json", by_alias=True)
    for part in name.removeprefix("GANTRY_").lower().split("__"):
        default = default[part]
    # the value arrived (YAML reads `off` as false; the setting spells it "off")
    assert node == yaml.safe_load(value) or (str(node) == value and node != default), where
