"""Change the configuration of a running gateway without dropping a request.

A new configuration (from ``SIGHUP``, ``POST /admin/reload`` or an admin API change) is
validated whole first; then ``plan()`` (pure) compares it with the running one. Sections
that a running process cannot take (the listening address, the stores, the database,
TLS, tracing, workers...) make the whole change refused with one message naming them:
the old configuration stays. Everything else applies at once: aliases, splits, shadow
traffic, fallbacks, routing policies and their knobs, timeouts, retries, breakers,
admission, tiers, tenants, prices, redaction, request logs, and engines — added
engines are probed before they take traffic; removed or changed ones are drained
(no new requests; those in flight finish) before they leave.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gantry.config import EngineSpec, GatewayConfig
from gantry.errors import ConfigError

# Sections a running process cannot change (they were used to build what is running).
RESTART = (
    "host",
    "port",
    "workers",
    "ssl_certfile",
    "ssl_keyfile",
    "security",
    "ratelimit",
    "idempotency",
    "ledger",
    "tracing",
    "embedded",
    "limits",
    "health",
    "launch",
    "discovery",
)


@dataclass(frozen=True, slots=True)
class Plan:
    sections: tuple[str, ...]  # the top-level sections that change
    added: tuple[EngineSpec, ...]
    removed: tuple[str, ...]  # engine names that leave (drained first)

    @property
    def empty(self) -> bool:
        return not (self.sections or self.added or self.removed)


def _key(spec: EngineSpec) -> str:
    return spec.name or spec.url


def plan(old: GatewayConfig, new: GatewayConfig, running: Mapping[str, EngineSpec]) -> Plan:
    """What changes from ``old`` to ``new``; ``running`` maps engine name -> spec as the
    pool has them. Raises ``ConfigError`` naming every section that needs a restart."""
    a = old.model_dump(mode="json", by_alias=True)
    b = new.model_dump(mode="json", by_alias=True)
    sections = tuple(k for k in b if k != "engines" and a.get(k) != b[k])
    need_restart = [k for k in sections if k in RESTART]
    if need_restart:
        raise ConfigError(
            f"these settings need a restart, so nothing was changed: {', '.join(need_restart)}"
        )
    now = {_key(spec): (name, spec) for name, spec in running.items()}
    wanted = {_key(spec): spec for spec in new.engines}
    removed = [name for key, (name, spec) in now.items() if wanted.get(key) != spec]
    added = [spec for key, spec in wanted.items() if key not in now or now[key][1] != spec]
    return Plan(sections, tuple(added), tuple(removed))
