"""``Discovery``: runs the configured sources and applies what they find to the pool.

Each source publishes the whole set it sees (name -> URL). The one applier task turns
the latest sets into pool changes, one change at a time: a new engine is added
(``EnginePool.add``: probed before it is routable); an engine that left the set, or whose
address changed, is drained and removed in the background (``EnginePool.remove``: no new
requests, those in flight get ``drain_grace_s``), and a changed one comes back under its
new address once its removal is over. Only engines a source added are ever removed:
static and launched engines are not discovery's to touch.

Bounded: a source's set is cut to its ``max_engines`` (by name, logged); names refused
by the pool (a clash with a configured engine) are remembered, at most ``max_engines``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from typing import Any, Protocol

from gantry.config import DiscoveredEngine, DiscoveryConfig, EngineSpec
from gantry.engines.discovery._source import OnEvent, Publish, SourceStatus
from gantry.engines.pool import EnginePool
from gantry.errors import GantryError

log = logging.getLogger("gantry.discovery")


class Source(Protocol):
    cfg: Any

    @property
    def status(self) -> SourceStatus: ...

    async def open(self) -> None: ...
    async def run(self, publish: Publish) -> None: ...
    async def aclose(self) -> None: ...


class DiscoveryState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


def make_sources(cfg: DiscoveryConfig, on_event: OnEvent | None = None) -> list[Source]:
    sources: list[Source] = []
    if cfg.kubernetes is not None:
        from gantry.engines.discovery._kubernetes import KubernetesSource

        sources.append(KubernetesSource(cfg.kubernetes, on_event))
    if cfg.dns is not None:
        from gantry.engines.discovery._dns import DnsSource

        sources.append(DnsSource(cfg.dns, on_event))
    return sources


def to_specs(found: dict[str, str], tpl: DiscoveredEngine, source: str) -> dict[str, EngineSpec]:
    """The engines a source found, as specs: the first ``max_engines`` by name (pure)."""
    names = sorted(found)
    if len(names) > tpl.max_engines:
        log.warning(
            "%s discovery found %d engines; only the first %d (by name) are used (max_engines)",
            source,
            len(names),
            tpl.max_engines,
        )
        names = names[: tpl.max_engines]
    return {
        n: EngineSpec(
            url=found[n],
            name=n,
            models=tpl.models,
            api_key=tpl.api_key,
            transport=tpl.transport,
            group=tpl.group,
        )
        for n in names
    }


class Discovery:
    def __init__(
        self,
        pool: EnginePool,
        sources: list[Source],
        *,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.pool = pool
        self.sources = sources
        self._on_event = on_event
        self.owned: dict[str, str] = {}  # engine name -> the source that added it
        self._grace: dict[str, float] = {}  # engine name -> its drain grace
        self._wanted: dict[str, dict[str, EngineSpec]] = {}  # source -> its latest set
        self._removing: dict[str, asyncio.Task[None]] = {}
        self._refused: set[str] = set()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.state = DiscoveryState.NEW

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> Discovery:
        opened: list[Source] = []
        try:
            for s in self.sources:
                await s.open()
                opened.append(s)
        except BaseException:
            for s in opened:
                await s.aclose()
            raise
        for s in self.sources:
            name = s.status.source
            self._tasks.append(asyncio.create_task(s.run(self._publisher(s)), name=name))
        self._tasks.append(asyncio.create_task(self._apply_loop(), name="discovery-apply"))
        self.state = DiscoveryState.RUNNING
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop watching; discovered engines stay in the pool (it closes them)."""
        self.state = DiscoveryState.CLOSED
        tasks = [*self._tasks, *self._removing.values()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        for s in self.sources:
            await s.aclose()

    # -- what sources see -----------------------------------------------------------------
    def statuses(self) -> list[SourceStatus]:
        return [s.status for s in self.sources]

    def _publisher(self, source: Source) -> Publish:
        name = source.status.source

        def publish(found: dict[str, str]) -> None:
            self._wanted[name] = to_specs(found, source.cfg, name)
            for n in self._wanted[name]:
                self._grace[n] = source.cfg.drain_grace_s
            self._event(name, "update")
            self._changed.set()

        return publish

    def _event(self, source: str, event: str) -> None:
        if self._on_event is not None:
            self._on_event(source, event)

    # -- applying -------------------------------------------------------------------------
    async def _apply_loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self.apply()
            except Exception:  # never let the applier die
                log.exception("applying discovered engines failed")

    def _merged(self) -> dict[str, tuple[str, EngineSpec]]:
        out: dict[str, tuple[str, EngineSpec]] = {}
        for source, specs in self._wanted.items():
            for n, spec in specs.items():
                out.setdefault(n, (source, spec))
        return out

    async def apply(self) -> None:
        wanted = self._merged()
        for name, source in list(self.owned.items()):
            w = wanted.get(name)
            changed = w is not None and self.pool.spec_of(name).url != w[1].url
            if (w is None or changed) and name not in self._removing:
                self._start_removal(name, source)
        adds = [
            (source, spec)
            for n, (source, spec) in wanted.items()
            if n not in self.owned and n not in self._removing and n not in self._refused
        ]
        await asyncio.gather(*(self._add(source, spec) for source, spec in adds))

    async def _add(self, source: str, spec: EngineSpec) -> None:
        assert spec.name is not None
        try:
            await self.pool.add(spec)
        except GantryError as exc:
            if len(self._refused) < 4096:
                self._refused.add(spec.name)
            log.warning("%s discovery: engine %s not added: %s", source, spec.name, exc)
            return
        self.owned[spec.name] = source
        self._event(source, "added")

    def _start_removal(self, name: str, source: str) -> None:
        task = asyncio.get_running_loop().create_task(self._remove(name, source))
        self._removing[name] = task

    async def _remove(self, name: str, source: str) -> None:
        try:
            await self.pool.remove(name, drain=True, grace_s=self._grace.get(name, 30.0))
        except KeyError:
            pass  # an operator removed it meanwhile
        finally:
            self.owned.pop(name, None)
            self._removing.pop(name, None)
            self._grace.pop(name, None)
            self._changed.set()  # it may come back (a new address)
        self._event(source, "removed")

    def __repr__(self) -> str:
        return (
            f"<Discovery sources={len(self.sources)} engines={len(self.owned)} "
            f"removing={len(self._removing)} state={self.state.value}>"
        )


__all__ = ["Discovery", "DiscoveryState", "Source", "make_sources", "to_specs"]
