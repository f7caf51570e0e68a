"""What discovery sources share: their status, the backoff, and logging an outage once.

A source runs until cancelled and calls ``publish(engines)`` (name -> URL) whenever the
set it sees changes. When its backend fails (the API server or the resolver is down), it
keeps the last set it published, retries with a growing backoff, logs the outage once
(and its end), and counts every failure in ``status`` and through ``on_event``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

Publish = Callable[[dict[str, str]], None]
OnEvent = Callable[[str, str], None]  # (source, event): metrics

log = logging.getLogger("gantry.discovery")


def next_backoff(previous: float, initial: float, cap: float) -> float:
    """0 -> initial -> 2x ... -> cap."""
    return min(cap, initial if previous <= 0 else previous * 2)


@dataclass(slots=True)
class SourceStatus:
    source: str  # "kubernetes" or "dns"
    up: bool = False  # the last list, watch or resolution worked
    engines: int = 0  # in the last set published
    errors: int = 0  # failures since start
    resyncs: int = 0  # full re-lists (Kubernetes: 410 Gone, reconnects)
    last_error: str = ""
    last_ok: float | None = None  # wall-clock time of the last success
    down_since: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "up": self.up,
            "engines": self.engines,
            "errors": self.errors,
            "resyncs": self.resyncs,
            "last_error": self.last_error,
            "last_ok": self.last_ok,
            "down_since": self.down_since,
        }


class Health:
    """A source's status, with the outage logged once and counted every time."""

    def __init__(self, source: str, on_event: OnEvent | None) -> None:
        self.status = SourceStatus(source)
        self._on_event = on_event
        self.backoff = 0.0

    def event(self, name: str) -> None:
        if self._on_event is not None:
            self._on_event(self.status.source, name)

    def ok(self) -> None:
        s = self.status
        if s.down_since is not None:
            log.warning(
                "%s discovery is back after %.1fs; last error: %s",
                s.source,
                time.time() - s.down_since,
                s.last_error,
            )
        s.up, s.last_ok, s.down_since = True, time.time(), None
        self.backoff = 0.0

    def failed(self, error: str, initial: float, cap: float) -> float:
        """Record a failure; returns how long to wait before the next try."""
        s = self.status
        s.errors += 1
        s.last_error = error[:300]
        self.event("error")
        if s.down_since is None:
            s.down_since = time.time()
            log.warning(
                "%s discovery failed, keeping the last %d engine(s) and retrying: %s",
                s.source,
                s.engines,
                s.last_error,
            )
        else:
            log.debug("%s discovery still failing: %s", s.source, s.last_error)
        s.up = False
        self.backoff = next_backoff(self.backoff, initial, cap)
        return self.backoff


__all__ = ["Health", "OnEvent", "Publish", "SourceStatus", "next_backoff"]
