"""One engine's probe: ``/health``, then ``/v1/models`` when due, then ``/metrics``.

An engine's model list is read from ``/v1/models`` at its first good probe, again at
the first good probe after any failure (a restarted engine may serve another model),
and every ``health.models_refresh_s`` (a restart quicker than a probe interval).

Health reasons reach clients (``/readyz``), so they name no engine address.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from gantry.config import EngineSpec, HealthConfig
from gantry.engines.health import HealthState, observe
from gantry.engines.scrape import EngineLoad, parse_metrics
from gantry.engines.transport import EngineRequest, EngineTransport, describe_os_error
from gantry.errors import GantryError

log = logging.getLogger("gantry.pool")


@dataclass(slots=True)
class Member:
    """One engine as the pool knows it; probes update it in place."""

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


class Prober:
    def __init__(self, cfg: HealthConfig, clock: Callable[[], float]) -> None:
        self._cfg = cfg
        self._clock = clock

    async def _get(self, m: Member, path: str) -> tuple[int, bytes]:
        t = self._cfg.timeout_s
        resp = await m.transport.send(EngineRequest("GET", path, connect_timeout=t, read_timeout=t))
        body = await asyncio.wait_for(resp.read(), t)
        return resp.status, body

    async def probe(self, m: Member) -> None:
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

    async def _discover(self, m: Member) -> tuple[bool, str]:
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

    async def _scrape(self, m: Member) -> None:
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


def scrub(m: Member, text: str) -> str:
    """A reason fit for clients: without the engine's address or a repeat of its name."""
    text = text.removeprefix(f"engine {m.name} ")
    for address in (m.spec.url, urlsplit(m.spec.url).netloc):
        text = text.replace(address, m.name)
    return text


def _reason(m: Member, exc: BaseException) -> str:
    if isinstance(exc, GantryError):
        return scrub(m, str(exc) or type(exc).__name__)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return scrub(m, f"unreachable: {describe_os_error(exc)}")
