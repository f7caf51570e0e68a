"""Every help screen reads cleanly in an 80-column terminal."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from gantry.cli import app

WIDTH = 80
# Typer's default metavars are Python type names: <str>, <list[str]>, <int range>.
TYPE_METAVAR = re.compile(r"<(?:list\[|\w+ range>|(?:str|int|float|bool|path|tuple|dict)>)")


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = dict(_commands(typer.main.get_command(app)))


def _help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(WIDTH)})
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_covered():
    names = {" ".join(p) for p in COMMANDS}
    assert {"sim", "serve", "keys create", "bench", "bench sweep", "config show", "plan"} <= names


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(("gantry", *p)))
def test_help_fits_80_columns(path: tuple[str, ...]):
    out = _help(path)
    cmd = COMMANDS[path]
    lines = out.splitlines()
    assert [line for line in lines if len(line) > WIDTH] == []
    assert "…" not in out
    assert TYPE_METAVAR.findall(out) == []
    # Click cuts a long first sentence in a group's command list with "...".
    assert [line for line in lines if line.endswith("...") and "Usage:" not in line] == []
    for param in cmd.params:
        if param.param_type_name == "option" and not param.hidden:
            for name in (*param.opts, *param.secondary_opts):
                assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", out), name
        elif param.param_type_name == "argument":
            assert param.metavar and param.metavar in lines[0], param.name
    for name in getattr(cmd, "commands", {}):
        assert re.search(rf"^  {re.escape(name)} ", out, re.MULTILINE), name
