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
        "supervisor",  # engines: launch: (the gateway owns a supervisor)
    },
    "bench": {"protocol", "errors", "engines", "config", "routing", "console", "netutil"},
    # launch/watch engines; only the CLI and the gateway may use it
    "supervisor": {
        "protocol",
        "errors",
        "config",
        "engines",
        "observability",
        "sim",
        "console",
        "netutil",
    },
    # capacity planning and tuning: the supervisor's derivation, the simulator in virtual time
    "planner": {"protocol", "errors", "sim", "supervisor", "bench", "console", "netutil"},
    # the SDK: the simulator's engine core in process, the supervisor's GPU interface
    "client": {"protocol", "errors", "sim", "supervisor"},
    "errors": {"protocol"},
    "config": {"errors"},
    "console": set(),
    "netutil": set(),
    # the CLI sits on top: it may use every package, and nothing may use it
    "cli": {
        "protocol",
        "routing",
        "state",
        "engines",
        "errors",
        "config",
        "observability",
        "gateway",
        "bench",
        "sim",
        "supervisor",
        "planner",
        "console",
        "netutil",
        "client",
    },
    "__main__": {"cli"},
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


def test_every_module_has_a_rule():
    """A new top-level package or module must be placed in ALLOWED (the picture of the
    architecture), not slip past the check."""
    names = {p.name.removesuffix(".py") for p in SRC.iterdir() if p.name != "__pycache__"}
    names -= {"__init__", "py.typed"}
    assert names <= set(ALLOWED), names - set(ALLOWED)


SUPERVISOR_USERS = ("cli", "gateway", "supervisor", "planner", "client")


def test_only_cli_gateway_planner_and_client_import_the_supervisor():
    """The client reads GPUs through the supervisor's GpuSource (in-process mode)."""
    bad = [
        str(py.relative_to(SRC))
        for py in SRC.rglob("*.py")
        if py.relative_to(SRC).parts[0].removesuffix(".py") not in SUPERVISOR_USERS
        and "supervisor" in _imports(py)
    ]
    assert not bad, bad


def test_nothing_imports_the_cli():
    bad = [
        str(py.relative_to(SRC))
        for py in SRC.rglob("*.py")
        if py.name not in ("cli.py", "__main__.py") and "cli" in _imports(py)
    ]
    assert not bad, bad


def test_public_facades_declare_all():
    for init in SRC.rglob("__init__.py"):
        if init.parent == SRC:
            continue
        assert "__all__" in init.read_text(), init
