"""DNS discovery: resolve a name (a headless Service) every ``interval_s``; one engine
per address.

The system resolver (``getaddrinfo``: /etc/hosts, the cluster's DNS) is used, or a
given DNS server asked directly for A and AAAA records (``nameserver``, with dnspython).
A failed resolution, an empty answer included (a headless Service with no ready pod
answers NXDOMAIN, and so does a DNS server in trouble), keeps the last set: the pool's
health probes take engines that really went away out of routing, and the next good
answer removes them. Engines are named ``<prefix>-<hash of address:port>``, never by
their address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

from gantry.config import DnsDiscovery
from gantry.engines.discovery._slices import address_url, hashed_name
from gantry.engines.discovery._source import Health, OnEvent, Publish, SourceStatus

Resolve = Callable[[str, int], Awaitable[list[str]]]


class ResolveError(Exception):
    pass


async def system_resolve(name: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ResolveError(f"{name}: {exc.strerror or exc}") from None
    return [str(info[4][0]) for info in infos]


def nameserver_resolver(server: str, timeout_s: float) -> Resolve:
    """Ask ``server`` ("host" or "host:port") for A and AAAA records."""
    import dns.asyncresolver  # the dns extra
    import dns.exception
    import dns.resolver

    host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [host or server]
    resolver.port = int(port) if port else 53
    resolver.lifetime = timeout_s

    async def resolve(name: str, _port: int) -> list[str]:
        out: list[str] = []
        errors = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await resolver.resolve(name, rdtype, search=False)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN) as exc:
                errors.append(str(exc))
                continue
            except dns.exception.DNSException as exc:
                raise ResolveError(f"{name}: {exc}") from None
            out.extend(r.address for r in answer)
        if not out:
            raise ResolveError(f"{name}: {errors[0] if errors else 'no address'}")
        return out

    return resolve


def engines_of(addresses: list[str], *, port: int, scheme: str, prefix: str) -> dict[str, str]:
    """name -> URL, one per distinct valid address (pure)."""
    out: dict[str, str] = {}
    for a in sorted(set(addresses)):
        try:
            ipaddress.ip_address(a.split("%", 1)[0])
        except ValueError:
            continue
        out[hashed_name(prefix, a, port)] = address_url(scheme, a, port)
    return out


class DnsSource:
    def __init__(
        self, cfg: DnsDiscovery, on_event: OnEvent | None = None, resolve: Resolve | None = None
    ) -> None:
        self.cfg = cfg
        self.health = Health("dns", on_event)
        if resolve is None:
            resolve = (
                nameserver_resolver(cfg.nameserver, cfg.timeout_s)
                if cfg.nameserver
                else system_resolve
            )
        self._resolve = resolve
        prefix = cfg.name_prefix if cfg.name_prefix is not None else cfg.name.split(".", 1)[0]
        self.prefix = f"{prefix}-"

    @property
    def status(self) -> SourceStatus:
        return self.health.status

    async def open(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def run(self, publish: Publish) -> None:
        cfg = self.cfg
        while True:
            try:
                async with asyncio.timeout(cfg.timeout_s):
                    found = await self._resolve(cfg.name, cfg.port)
                engines = engines_of(found, port=cfg.port, scheme=cfg.scheme, prefix=self.prefix)
                if not engines:
                    raise ResolveError(f"{cfg.name}: no usable address")
            except (ResolveError, TimeoutError, OSError) as exc:
                wait = self.health.failed(
                    str(exc) or type(exc).__name__, cfg.backoff_initial_s, cfg.backoff_max_s
                )
                await asyncio.sleep(min(wait, cfg.interval_s))
                continue
            self.health.ok()
            self.health.status.engines = len(engines)
            publish(engines)
            await asyncio.sleep(cfg.interval_s)

    def __repr__(self) -> str:
        s = self.health.status
        return f"<DnsSource name={self.cfg.name} up={s.up} engines={s.engines}>"


__all__ = ["DnsSource", "Resolve", "ResolveError", "engines_of", "system_resolve"]
