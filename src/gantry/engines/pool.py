"""The engine pool: membership, health probes, load scrape, and an immutable snapshot.

Background probing builds a new ``PoolSnapshot`` and swaps it in whole; routing reads
whichever snapshot is current and never sees a half-updated one. In-flight counts are
the only live, per-request numbers (a plain dict, one entry per engine).

An engine's model list is read from ``/v1/models`` at its first good probe, again at
the first good probe after any failure (a restarted engine may serve another model),
and every ``health.models_refresh_s`` (a restart quicker than a probe interval).

Health reasons reach clients (``/readyz``), so they name no engine address.

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
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from gantry.config import EngineSpec, HealthConfig
from gantry.engines.h1 import H1Transport
from gantry.engines.health import HealthState, mark_down, observe
from gantry.engines.scrape import EngineLoad, parse_metrics
from gantry.engines.transport import (
    EngineRequest,
    EngineTransport,
    HTTPTransport,
    describe_os_error,
)
from gantry.errors import GantryError
from gantry.routing.snapshot import EngineView, PoolSnapshot

log = logging.getLogger("gantry.pool")


class PoolState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(slots=True)
class _Member:
    spec: EngineSpec
    name: str
    transport: EngineTransport
    health: HealthState = HealthState()
    load: EngineLoad = EngineLoad()
    models: tuple[str, ...] = ()
    max_model_len: int | None = None
    has_metrics: bool = True
    discovered: bool = False  # /v1/models has been read at least once
    models_due: float = 0.0  # clock time to read /v1/models again; 0: at the next good probe
    draining: bool = False  # no new requests; still probed and listed
    removers: int = 0  # remove() calls under way: undrain() may not bring it back


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
        self._clock = clock
        self._factory = transport_factory
        self._members: dict[str, _Member] = {}
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

    def _new_member(self, spec: EngineSpec, name: str) -> _Member:
        if spec.name is None:
            spec = spec.model_copy(update={"name": name})
        return _Member(spec, name, self._factory(spec), models=tuple(spec.models))

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
            await self._probe(m)
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

    async def _wait_idle(self, m: _Member, grace_s: float) -> None:
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
        m.health = mark_down(m.health, _scrub(m, reason))
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
            await asyncio.gather(*(self._probe(m) for m in members))
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
                draining=m.draining,
            )
            for m in self._members.values()
        )

    async def _get(self, m: _Member, path: str) -> tuple[int, bytes]:
        t = self._cfg.timeout_s
        resp = await m.transport.send(EngineRequest("GET", path, connect_timeout=t, read_timeout=t))
        body = await asyncio.wait_for(resp.read(), t)
        return resp.status, body

    async def _probe(self, m: _Member) -> None:
        before = m.health.healthy
        ok, reason = False, ""
        try:
            status, _ = await self._get(m, "/health")
            ok = status == 200
            reason = "" if ok else f"/health returned {status}"
            if ok and self._clock() >= m.models_due:
                ok, reason = await self._discover(m)
        except (GantryError, TimeoutError, OSError) as exc:
            reason = _reason(m, exc)
        if not ok:
            m.models_due = 0.0  # it may come back serving another model
        m.health = observe(
            m.health,
            ok,
            failure_threshold=self._cfg.failure_threshold,
            success_threshold=self._cfg.success_threshold,
            reason=reason,
        )
        if ok and self._cfg.scrape_metrics and m.has_metrics:
            await self._scrape(m)
        if before != m.health.healthy:
            log.warning(
                "engine %s (%s) is now %s%s",
                m.name,
                m.spec.url,
                "healthy" if m.health.healthy else "unhealthy",
                f" ({m.health.reason})" if m.health.reason else "",
            )

    async def _discover(self, m: _Member) -> tuple[bool, str]:
        """Read /v1/models; note and log a change of models or max_model_len."""
        status, body = await self._get(m, "/v1/models")
        served = _parse_models(body) if status == 200 else None
        if served is None:
            if m.spec.models:  # configured names: discovery only fills max_model_len
                m.models_due = self._clock() + self._cfg.models_refresh_s
                return True, ""
            if status != 200:
                return False, f"/v1/models returned {status}"
            return False, "/v1/models answered something unreadable"
        models = m.spec.models or served[0]
        now, was = (models, served[1]), (m.models, m.max_model_len)
        if not m.discovered:
            log.info("engine %s serves %s", m.name, _show(*now))
        elif now != was:
            log.warning("engine %s now serves %s (was %s)", m.name, _show(*now), _show(*was))
        m.models, m.max_model_len = now
        m.discovered = True
        m.models_due = self._clock() + self._cfg.models_refresh_s
        return True, ""

    async def _scrape(self, m: _Member) -> None:
        try:
            status, body = await self._get(m, "/metrics")
        except (GantryError, TimeoutError, OSError):
            return
        if status == 404:
            m.has_metrics = False  # not vLLM, or metrics disabled: route without them
            log.info("engine %s has no /metrics; routing on gateway counts only", m.name)
            return
        if status == 200:
            m.load = parse_metrics(body.decode("utf-8", "replace"))

    def __repr__(self) -> str:
        engines = self.snapshot.engines
        healthy = sum(1 for e in engines if e.healthy)
        draining = sum(1 for e in engines if e.draining)
        return (
            f"<EnginePool engines={len(self._members)} healthy={healthy} draining={draining}"
            f" leaving={len(self._leaving)} state={self.state.value}>"
        )


def _parse_models(body: bytes) -> tuple[tuple[str, ...], int | None] | None:
    """Model ids and the first max_model_len of a /v1/models answer; None if unreadable."""
    try:
        data = orjson.loads(body)["data"]
        served = tuple(str(c["id"]) for c in data)
        lens = [c.get("max_model_len") for c in data if c.get("max_model_len")]
        return served, int(lens[0]) if lens else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _draining_reason(health_reason: str) -> str:
    return f"draining ({health_reason})" if health_reason else "draining"


def _state_of(m: _Member) -> str:
    return "healthy" if m.health.healthy else f"unhealthy ({m.health.reason})"


def _show(models: tuple[str, ...], max_model_len: int | None) -> str:
    listed = f"[{', '.join(models)}]"
    return f"{listed}, max_model_len {max_model_len}" if max_model_len else listed


def _scrub(m: _Member, text: str) -> str:
    """A reason fit for clients: without the engine's address or a repeat of its name."""
    text = text.removeprefix(f"engine {m.name} ")
    for address in (m.spec.url, urlsplit(m.spec.url).netloc):
        text = text.replace(address, m.name)
    return text


def _reason(m: _Member, exc: BaseException) -> str:
    if isinstance(exc, GantryError):
        return _scrub(m, str(exc) or type(exc).__name__)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return _scrub(m, f"unreachable: {describe_os_error(exc)}")
