"""The engine pool: membership, health probes, load scrape, and an immutable snapshot.

Background probing builds a new ``PoolSnapshot`` and swaps it in whole; routing reads
whichever snapshot is current and never sees a half-updated one. In-flight counts are
the only live, per-request numbers (a plain dict, one entry per engine).

One engine's probe (health, ``/v1/models``, ``/metrics``) is ``engines.probe``; this
module owns the members, the probe loop and the snapshot.

Membership changes at run time without dropping a request:

- ``add(spec)`` probes the new engine (health, models) before it enters a snapshot, so
  it is never routable unprobed; one that fails the probe joins unhealthy and the probe
  loop heals it.
- ``drain(name)`` keeps an engine (probed, listed in ``by_model`` so ``/v1/models`` stays
  truthful) but takes it out of ``healthy_for()``: no new requests go there. Readiness
  treats a draining engine like an unhealthy one: a model whose engines all drain makes
  ``/readyz`` 503, its reason reading "draining". ``undrain(name)`` puts it back.
- ``remove(name)`` drains at once, waits (``drain=True``, up to ``grace_s``) for the
  gateway's requests on it to end, then drops it. Removal never cuts a request: one still
  open when the engine leaves (``drain=False``, or the grace ran out) keeps its connection;
  the name stays in ``inflight`` (a tombstone) so the dispatcher can still release the
  attempt, and the engine's transport is closed by the first probe round after its count
  reaches zero. Tombstones are bounded by the requests in flight, and ``add()`` refuses
  their names until they go.

The probe loop works on a copy of the member list and on member objects, never on names,
so a member added or removed during a round is neither lost nor brought back. Rounds do
not overlap (a lock), and a transport is only closed outside a round.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable

from gantry.config import EngineSpec, HealthConfig
from gantry.engines.h1 import H1Transport
from gantry.engines.health import mark_down
from gantry.engines.probe import Member, Prober, scrub
from gantry.engines.transport import EngineTransport, HTTPTransport
from gantry.errors import GantryError
from gantry.routing.snapshot import EngineView, PoolSnapshot

log = logging.getLogger("gantry.pool")


class PoolState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


# Called with the engine's spec, ``name`` filled in (``engine-<i>`` when not configured).
TransportFactory = Callable[[EngineSpec], EngineTransport]

# remove() checks the in-flight count this often: the data path decrements a plain dict
# and tells nobody (no hook on the hot path for a rare operator action).
_DRAIN_POLL_S = 0.02


def _http_factory(spec: EngineSpec) -> EngineTransport:
    if spec.transport == "aiohttp":
        return HTTPTransport(spec.url, api_key=spec.api_key, name=spec.name)
    return H1Transport(spec.url, api_key=spec.api_key, name=spec.name)


class EnginePool:
    def __init__(
        self,
        specs: tuple[EngineSpec, ...],
        health: HealthConfig,
        transport_factory: TransportFactory = _http_factory,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = health
        self._prober = Prober(health, clock)
        self._factory = transport_factory
        self._members: dict[str, Member] = {}
        self._adding: set[str] = set()  # names reserved by add() calls still probing
        self._leaving: dict[str, EngineTransport] = {}  # removed, requests still in flight
        self._next_index = len(specs)  # for engine-<n> names given by add()
        for i, spec in enumerate(specs):
            name = spec.name or f"engine-{i}"
            if name in self._members:
                raise GantryError(f"duplicate engine name {name!r}")
            self._members[name] = self._new_member(spec, name)
        # Requests in flight per engine, from this gateway. The dispatcher increments and
        # decrements it directly; a removed engine's entry stays until its count is zero.
        self.inflight: dict[str, int] = dict.fromkeys(self._members, 0)
        self._version = 0
        self.snapshot = PoolSnapshot.build(0, self._views())
        self._task: asyncio.Task[None] | None = None
        self._round = asyncio.Lock()  # probe rounds, and transport closes, one at a time
        self.state = PoolState.NEW
        self.listeners: list[Callable[[PoolSnapshot], None]] = []

    def _new_member(self, spec: EngineSpec, name: str) -> Member:
        if spec.name is None:
            spec = spec.model_copy(update={"name": name})
        return Member(spec, name, self._factory(spec), models=tuple(spec.models))

    async def __aenter__(self) -> EnginePool:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="pool-probe")
        self.state = PoolState.RUNNING
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self.state = PoolState.CLOSED
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        leaving, self._leaving = tuple(self._leaving.values()), {}
        for t in (*(m.transport for m in tuple(self._members.values())), *leaving):
            await t.aclose()

    # -- membership -------------------------------------------------------------------
    def names(self) -> tuple[str, ...]:
        """The members, draining ones and ones being removed included."""
        return tuple(self._members)

    def spec_of(self, name: str) -> EngineSpec:
        """The member's spec, its ``name`` filled in. KeyError for a non-member."""
        return self._members[name].spec

    def transport(self, name: str) -> EngineTransport:
        return self._members[name].transport

    def models_of(self, name: str) -> tuple[str, ...]:
        m = self._members.get(name)
        return m.models if m is not None else ()

    async def add(self, spec: EngineSpec) -> str:
        """Probe a new engine, then publish it in a new snapshot; returns its name.

        A name in use (by a member, an add() still probing, or a removed engine whose
        requests are still in flight) is a ``GantryError``. An engine that fails its
        first probe joins unhealthy, with the reason, and the probe loop heals it."""
        if self.state is PoolState.CLOSED:
            raise GantryError("cannot add an engine: the engine pool is closed")
        name = spec.name or self._fresh_name()
        self._check_free(name)
        m = self._new_member(spec, name)
        self._adding.add(name)
        try:
            await self._prober.probe(m)
            if self.state is PoolState.CLOSED:
                raise GantryError(f"engine {name} not added: the engine pool closed meanwhile")
        except BaseException:
            await m.transport.aclose()
            raise
        finally:
            self._adding.discard(name)
        self._members[name] = m
        self.inflight[name] = 0
        self._publish()
        log.info("engine %s (%s) added, %s", name, m.spec.url, _state_of(m))
        return name

    def _fresh_name(self) -> str:
        while (name := f"engine-{self._next_index}") in self._taken():
            self._next_index += 1
        self._next_index += 1
        return name

    def _taken(self) -> set[str]:
        return {*self._members, *self._adding, *self._leaving}

    def _check_free(self, name: str) -> None:
        if name in self._leaving:
            raise GantryError(
                f"engine name {name!r} is still in use by a removed engine with "
                f"{self.inflight.get(name, 0)} request(s) in flight; retry when they end"
            )
        if name in self._members or name in self._adding:
            raise GantryError(f"duplicate engine name {name!r}")

    async def remove(self, name: str, *, drain: bool = True, grace_s: float = 30.0) -> None:
        """Stop routing to ``name`` at once, let its requests end, then drop it.

        ``drain=True`` waits until the gateway has no request on it, at most ``grace_s``
        seconds; ``drain=False`` does not wait. Requests still in flight when it leaves
        keep their connections (see the module docstring). KeyError for a non-member.
        If this call is cancelled while waiting, the engine stays, draining."""
        m = self._members[name]
        m.removers += 1
        try:
            if not m.draining:
                m.draining = True
                self._publish()
            if drain:
                await self._wait_idle(m, grace_s)
        finally:
            m.removers -= 1
        if self._members.get(name) is not m:
            return  # a concurrent remove() finished first
        del self._members[name]
        self._leaving[name] = m.transport  # closed by _reap() once nothing uses it
        self._publish()
        log.info("engine %s (%s) removed", name, m.spec.url)
        busy = self.inflight.get(name, 0)
        if busy > 0:
            log.warning(
                "engine %s left with %d request(s) in flight; its connections close when they end",
                name,
                busy,
            )
            return
        async with self._round:  # not while a probe round may be using it
            await self._reap()

    async def _wait_idle(self, m: Member, grace_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, grace_s)
        while (
            self.inflight.get(m.name, 0) > 0
            and self._members.get(m.name) is m
            and self.state is not PoolState.CLOSED
        ):
            left = deadline - loop.time()
            if left <= 0:
                return
            await asyncio.sleep(min(_DRAIN_POLL_S, left))

    def drain(self, name: str) -> None:
        """Send no new requests to ``name``; it stays a probed member. KeyError if unknown."""
        m = self._members[name]
        if not m.draining:
            m.draining = True
            log.info("engine %s draining: no new requests", name)
            self._publish()

    def undrain(self, name: str) -> None:
        """Route new requests to ``name`` again (if healthy). KeyError if unknown;
        ``GantryError`` while a remove() of it is under way."""
        m = self._members[name]
        if m.removers:
            raise GantryError(f"engine {name!r} is being removed")
        if m.draining:
            m.draining = False
            log.info("engine %s takes new requests again", name)
            self._publish()

    async def _reap(self) -> None:
        """Close the transports of removed engines whose last request has ended."""
        done = [n for n in self._leaving if self.inflight.get(n, 0) <= 0]
        for name in done:
            transport = self._leaving.pop(name)
            self.inflight.pop(name, None)
            await transport.aclose()

    # -- health -----------------------------------------------------------------------
    def report_down(self, name: str, reason: str) -> None:
        """The data path saw a definitive failure: stop routing there until a probe heals it."""
        m = self._members.get(name)
        if m is None:
            return
        m.models_due = 0.0  # it may come back serving another model
        if not m.health.healthy:
            return
        m.health = mark_down(m.health, scrub(m, reason))
        log.warning("engine %s (%s) marked down: %s", name, m.spec.url, reason)
        self._publish()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.interval_s)
            try:
                await self.refresh()
            except Exception:  # never let the prober die
                log.exception("engine probe round failed")

    async def refresh(self) -> None:
        async with self._round:
            await self._reap()
            members = tuple(self._members.values())
            await asyncio.gather(*(self._prober.probe(m) for m in members))
        self._publish()

    async def rediscover(self, name: str) -> None:
        """Probe one engine and read its ``/v1/models`` now (an adapter came or went)."""
        m = self._members.get(name)
        if m is None:
            return
        async with self._round:
            m.models_due = 0.0
            await self._prober.probe(m)
        self._publish()

    def _publish(self) -> None:
        self._version += 1
        self.snapshot = PoolSnapshot.build(self._version, self._views())
        for listener in self.listeners:
            listener(self.snapshot)

    def _views(self) -> tuple[EngineView, ...]:
        return tuple(
            EngineView(
                name=m.name,
                url=m.spec.url,
                models=m.models,
                healthy=m.health.healthy,
                reason=_draining_reason(m.health.reason) if m.draining else m.health.reason,
                running=m.load.running or 0.0,
                waiting=m.load.waiting or 0.0,
                kv_usage=m.load.kv_usage,
                prefix_queries=m.load.prefix_queries,
                prefix_hits=m.load.prefix_hits,
                max_model_len=m.max_model_len,
                has_metrics=m.has_metrics,
                group=m.spec.group,
                draining=m.draining,
                role=m.spec.role,
            )
            for m in self._members.values()
        )

    def __repr__(self) -> str:
        engines = self.snapshot.engines
        healthy = sum(1 for e in engines if e.healthy)
        draining = sum(1 for e in engines if e.draining)
        return (
            f"<EnginePool engines={len(self._members)} healthy={healthy} draining={draining}"
            f" leaving={len(self._leaving)} state={self.state.value}>"
        )


def _draining_reason(health_reason: str) -> str:
    return f"draining ({health_reason})" if health_reason else "draining"


def _state_of(m: Member) -> str:
    return "healthy" if m.health.healthy else f"unhealthy ({m.health.reason})"
