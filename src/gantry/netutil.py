"""Loopback networking helpers shared by the commands, the tests and the benchmarks."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback TCP port that nothing listens on now (the caller should bind it soon)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


__all__ = ["free_port"]
