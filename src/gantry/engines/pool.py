"""The engine pool: membership, health probes, load scrape, and an immutable snapshot.

Background probing builds a new ``PoolSnapshot`` and swaps it in whole; routing reads
whichever snapshot is current and never sees a half-updated one. In-flight counts are
the only live, per-request numbers (a plain dict, one entry per engine).

An engine's model list is read from ``/v1/models`` at its first good probe, again at
the first good probe after any failure (a restarted engine may serve another model),
and every ``health.models_refresh_s`` (a restart quicker than a probe interval).

Health reasons reach clients (``/readyz``), so they name no engine address.
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


# Called with the engine's spec, ``name`` filled in (``engine-<i>`` when not configured).
TransportFactory = Callable[[EngineSpec], EngineTransport]


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
        self._members: list[_Member] = []
        seen: set[str] = set()
        for i, spec in enumerate(specs):
            name = spec.name or f"engine-{i}"
            if name in seen:
                raise GantryError(f"duplicate engine name {name!r}")
            seen.add(name)
            if spec.name is None:
                spec = spec.model_copy(update={"name": name})
            self._members.append(
                _Member(spec, name, transport_factory(spec), models=tuple(spec.models))
            )
        self.inflight: dict[str, int] = {m.name: 0 for m in self._members}
        self._by_name = {m.name: m for m in self._members}
        self._version = 0
        self.snapshot = PoolSnapshot.build(0, self._views())
        self._task: asyncio.Task[None] | None = None
        self.state = PoolState.NEW
        self.listeners: list[Callable[[PoolSnapshot], None]] = []

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
        for m in self._members:
            await m.transport.aclose()

    def transport(self, name: str) -> EngineTransport:
        return self._by_name[name].transport

    def models_of(self, name: str) -> tuple[str, ...]:
        m = self._by_name.get(name)
        return m.models if m is not None else ()

    def report_down(self, name: str, reason: str) -> None:
        """The data path saw a definitive failure: stop routing there until a probe heals it."""
        m = self._by_name.get(name)
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
        await asyncio.gather(*(self._probe(m) for m in self._members))
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
                reason=m.health.reason,
                running=m.load.running or 0.0,
                waiting=m.load.waiting or 0.0,
                kv_usage=m.load.kv_usage,
                prefix_queries=m.load.prefix_queries,
                prefix_hits=m.load.prefix_hits,
                max_model_len=m.max_model_len,
                has_metrics=m.has_metrics,
                group=m.spec.group,
            )
            for m in self._members
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
        healthy = sum(1 for e in self.snapshot.engines if e.healthy)
        return (
            f"<EnginePool engines={len(self._members)} healthy={healthy} state={self.state.value}>"
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
