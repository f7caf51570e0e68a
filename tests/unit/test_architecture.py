"""Imports point one way: protocol <- routing/state <- engines <- gateway/... <- cli."""

from __future__ import annotations

import ast
from pathlib import Path

import gantry

SRC = Path(gantry.__file__).parent
# package -> packages it may import from (besides itself)
ALLOWED = {
    "protocol": set(),
    "sim": {"protocol"},
    "routing": {"protocol"},
    "state": {"protocol", "errors", "config"},
    "observability": {"protocol", "routing", "errors", "config"},
    "engines": {"protocol", "routing", "errors", "config"},
    "gateway": {
        "protocol",
        "routing",
        "engines",
        "errors",
        "config",
        "observability",
        "state",
        "netutil",
    },
    "bench": {"protocol", "errors", "engines", "config", "routing", "console", "netutil"},
    "errors": {"protocol"},
    "config": {"errors"},
    "console": set(),
    "netutil": set(),
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gantry."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("gantry."):
                    out.add(a.name.split(".")[1])
    return out


def test_import_direction():
    bad = []
    for py in SRC.rglob("*.py"):
        rel = py.relative_to(SRC)
        pkg = rel.parts[0].removesuffix(".py")
        if pkg not in ALLOWED:
            continue
        for dep in _imports(py) - {pkg}:
            if dep not in ALLOWED[pkg]:
                bad.append(f"{rel} imports gantry.{dep}")
    assert not bad, bad


def test_public_facades_declare_all():
    for init in SRC.rglob("__init__.py"):
        if init.parent == SRC:
            continue
        assert "__all__" in init.read_text(), init
