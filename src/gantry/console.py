"""How the ``gantry`` commands report a fatal error: one line on stderr, then exit."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``gantry: error: <message>`` to stderr and exit with ``code``."""
    typer.echo(f"gantry: error: {message}", err=True)
    raise typer.Exit(code)


__all__ = ["fail"]
