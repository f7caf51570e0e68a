"""EndpointSlices (discovery.k8s.io/v1) as a set of engines: pure functions over dicts.

``SliceSet`` holds the slices of one list/watch, keyed by namespace/name. A list replaces
it whole (``replace``); a watch event changes one slice (``apply``). ``engines()`` is the
current set: one engine per endpoint that is ready and not terminating, by name. An
endpoint whose ``ready`` condition is absent counts as ready, as the API says consumers
should treat "unknown". A pod found in two slices (an IPv4 and an IPv6 one) is one engine:
the first slice by name wins.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_SLICES = 4096  # slices kept; a selector matching more is a configuration mistake


class BadEvent(ValueError):
    """A watch event or list that does not have the shape the API documents."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # the engine's name in the pool
    url: str


def address_url(scheme: str, address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}"


def hashed_name(prefix: str, address: str, port: int) -> str:
    """A stable name that does not show the address (names appear in public answers)."""
    digest = hashlib.sha256(f"{address}:{port}".encode()).hexdigest()[:8]
    return f"{prefix}{digest}"


def _port_of(obj: Mapping[str, Any], port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    for p in obj.get("ports") or ():
        if isinstance(p, dict) and p.get("name") == port and isinstance(p.get("port"), int):
            return int(p["port"])
    return None


def _usable(ep: Mapping[str, Any]) -> bool:
    cond = ep.get("conditions") or {}
    return cond.get("ready") is not False and cond.get("terminating") is not True


def endpoints_of(
    obj: Mapping[str, Any], *, port: int | str, scheme: str, prefix: str
) -> tuple[Endpoint, ...]:
    """The ready endpoints of one EndpointSlice."""
    number = _port_of(obj, port)
    if number is None:
        return ()
    out = []
    for ep in obj.get("endpoints") or ():
        if not isinstance(ep, dict) or not _usable(ep):
            continue
        addresses = ep.get("addresses") or ()
        if not addresses or not isinstance(addresses[0], str):
            continue
        ref = ep.get("targetRef") or {}
        pod = ref.get("name") if isinstance(ref, dict) else None
        name = f"{prefix}{pod}" if isinstance(pod, str) and pod else None
        out.append(
            Endpoint(
                name or hashed_name(prefix or "ep-", addresses[0], number),
                address_url(scheme, addresses[0], number),
            )
        )
    return tuple(out)


def slice_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise BadEvent("an EndpointSlice without metadata.name")
    return f"{meta.get('namespace') or ''}/{meta['name']}"


def resource_version(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    if not isinstance(rv, str) or not rv:
        raise BadEvent("no metadata.resourceVersion")
    return rv


class SliceSet:
    def __init__(self, *, port: int | str, scheme: str = "http", prefix: str = "") -> None:
        self._port, self._scheme, self._prefix = port, scheme, prefix
        self._slices: dict[str, tuple[Endpoint, ...]] = {}

    def _endpoints(self, obj: Mapping[str, Any]) -> tuple[Endpoint, ...]:
        return endpoints_of(obj, port=self._port, scheme=self._scheme, prefix=self._prefix)

    def replace(self, items: Iterable[Mapping[str, Any]]) -> None:
        """The result of a list: every slice, nothing else."""
        slices: dict[str, tuple[Endpoint, ...]] = {}
        for obj in items:
            if len(slices) >= MAX_SLICES:
                break
            slices[slice_key(obj)] = self._endpoints(obj)
        self._slices = slices

    def apply(self, kind: str, obj: Mapping[str, Any]) -> bool:
        """One watch event (ADDED, MODIFIED, DELETED); True when the engines changed.
        BOOKMARK and ERROR events are the watcher's business, not this set's."""
        key = slice_key(obj)
        before = self._slices.get(key)
        if kind == "DELETED":
            self._slices.pop(key, None)
        elif kind in ("ADDED", "MODIFIED"):
            if key not in self._slices and len(self._slices) >= MAX_SLICES:
                return False
            self._slices[key] = self._endpoints(obj)
        else:
            raise BadEvent(f"unexpected watch event type {kind!r}")
        return self._slices.get(key) != before

    def engines(self) -> dict[str, str]:
        """name -> URL of every usable endpoint (first slice by name wins a name)."""
        out: dict[str, str] = {}
        for key in sorted(self._slices):
            for ep in self._slices[key]:
                out.setdefault(ep.name, ep.url)
        return out

    def __len__(self) -> int:
        return len(self._slices)

    def __repr__(self) -> str:
        return f"<SliceSet slices={len(self._slices)} engines={len(self.engines())}>"


__all__ = [
    "MAX_SLICES",
    "BadEvent",
    "Endpoint",
    "SliceSet",
    "address_url",
    "endpoints_of",
    "hashed_name",
    "resource_version",
    "slice_key",
]
