"""Engines found at run time: Kubernetes EndpointSlices (list + watch) and DNS names.

``Discovery(pool, make_sources(cfg.discovery))`` is an async context manager that runs
the sources and adds, drains and removes engines in the pool as they come and go.
"""

from gantry.engines.discovery._discovery import (
    Discovery,
    DiscoveryState,
    Source,
    make_sources,
    to_specs,
)
from gantry.engines.discovery._dns import DnsSource, Resolve, ResolveError, engines_of
from gantry.engines.discovery._slices import (
    BadEvent,
    Endpoint,
    SliceSet,
    address_url,
    endpoints_of,
    hashed_name,
)
from gantry.engines.discovery._source import SourceStatus, next_backoff

__all__ = [
    "BadEvent",
    "Discovery",
    "DiscoveryState",
    "DnsSource",
    "Endpoint",
    "Resolve",
    "ResolveError",
    "SliceSet",
    "Source",
    "SourceStatus",
    "address_url",
    "endpoints_of",
    "engines_of",
    "hashed_name",
    "make_sources",
    "next_backoff",
    "to_specs",
]
