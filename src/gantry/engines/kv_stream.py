"""The state of one engine's KV-event stream: a pure state machine, time passed in.

It decides, for each thing the subscriber sees, what to count, whether the engine's
blocks must be dropped from the index, and whether the index can be trusted for that
engine (``degraded`` means: score it by approximate prefix matching instead)::

    seen                              count      index           degraded
    connected                         up         -               until a batch arrives
    disconnected                      down       cleared         until connected and a
                                                                 batch arrives
    first batch (start, reconnect)    -          -               seq 0: no (the publisher
                                                                 just started, its cache
                                                                 was empty); else
                                                                 recovery_s (joined late)
    seq == last + 1                   -          -               -
    seq >  last + 1  (lost batches)   gap        cleared         recovery_s
    seq <= last      (restarted)      restart    cleared         recovery_s
    undecodable, seq readable         malformed  cleared (the    recovery_s
                                                 batch is lost)
    undecodable, no seq               malformed  -               recovery_s

"recovery_s" means from now: the index rebuilds from the events that follow, and is
trusted again once it has had that long. A degraded *episode* runs from the first
problem until the engine is trusted again; each kind of problem is logged once per
episode (``Step.warn``), however many messages repeat it. State is a few scalars and a
set of at most four kinds: nothing grows with the number of events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Step:
    """What the subscriber does after one observation."""

    kinds: tuple[str, ...] = ()  # counted through on_event, in order
    clear: bool = False  # drop this engine's blocks from the index
    warn: str | None = None  # first problem of its kind in this episode: log a warning
    info: str | None = None  # connected / trusted again: log at info


class KVStream:
    """Sequence numbers, connection and trust for one engine's event stream."""

    def __init__(self, recovery_s: float) -> None:
        self.recovery_s = recovery_s
        self.connected = False
        self.last_seq: int | None = None  # None: the next batch (re)synchronises
        self._awaiting = True  # no batch since the last (re)connect
        self._until = 0.0
        self._open = True  # in a degraded episode (a new stream starts in one)
        self._logged: set[str] = set()

    # -- queries ----------------------------------------------------------------
    def degraded(self, now: float) -> bool:
        return not self.connected or self._awaiting or now < self._until

    def degraded_until(self, now: float) -> float:
        """Clock time the engine is degraded until: ``inf`` while it cannot end by itself
        (disconnected, or no batch yet), a past time when it is trusted."""
        if not self.connected or self._awaiting:
            return math.inf
        return self._until if now < self._until else 0.0

    # -- observations -------------------------------------------------------------
    def connect(self, now: float) -> Step:
        self.connected = True
        self._awaiting = True
        return Step(("up",), info="publisher connected")

    def disconnect(self, now: float) -> Step:
        if not self.connected:
            return Step()
        self.connected = False
        self.last_seq = None  # whatever comes next, a restarted engine or the same one
        # No recovery window here: the first batch after reconnecting decides (table).
        return Step(("down",), clear=True, warn=self._problem("down", "publisher disconnected"))

    def batch(self, seq: int, now: float) -> Step:
        """A decoded batch with sequence number ``seq``; apply its events after this."""
        kinds, warn = self._sequence(seq, now)
        return Step(kinds, bool(kinds), warn, self._maybe_trusted(now))

    def malformed(self, seq: int | None, reason: str, now: float) -> Step:
        """A message that failed to decode; ``seq`` if its sequence frame was readable."""
        kinds, warn = self._sequence(seq, now) if seq is not None else ((), None)
        self._until = max(self._until, now + self.recovery_s)
        more = self._problem("malformed", f"malformed message skipped ({reason})")
        warn = "; ".join(w for w in (warn, more) if w) or None
        # A batch we cannot read is a batch lost; a message without a sequence number
        # is not one of the publisher's batches, so nothing is known to be lost.
        return Step((*kinds, "malformed"), seq is not None, warn)

    # -- internals ----------------------------------------------------------------
    def _sequence(self, seq: int, now: float) -> tuple[tuple[str, ...], str | None]:
        last, self.last_seq, self._awaiting = self.last_seq, seq, False
        if last is None:
            if seq != 0:  # joined a running stream: blocks cached before it are unknown
                self._until = max(self._until, now + self.recovery_s)
            return (), None
        if seq == last + 1:
            return (), None
        self._until = max(self._until, now + self.recovery_s)
        if seq > last + 1:
            return ("gap",), self._problem("gap", f"lost batches {last + 1}..{seq - 1}")
        why = f"sequence went back from {last} to {seq} (publisher restarted)"
        return ("restart",), self._problem("restart", why)

    def _problem(self, kind: str, message: str) -> str | None:
        """Open (or stay in) a degraded episode; the message if not yet logged in it."""
        self._open = True
        if kind in self._logged:
            return None
        self._logged.add(kind)
        return message

    def _maybe_trusted(self, now: float) -> str | None:
        if not self._open or self.degraded(now):
            return None
        self._open = False
        self._logged.clear()
        return f"in sync at seq {self.last_seq}: index trusted"

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<KVStream {state} last_seq={self.last_seq} until={self._until:g}>"
