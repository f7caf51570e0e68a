"""DNS discovery for real: the system resolver (localhost), and a DNS server in the test
that answers a name with several loopback addresses, each a simulated engine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import dns.message
import dns.rcode
import dns.rrset

from gantry.config import DnsDiscovery, HealthConfig
from gantry.engines import EnginePool
from gantry.engines.discovery import Discovery, DnsSource
from gantry.netutil import free_port
from tests.helpers import gantry_cmd, run_proc, wait_http

NAME = "vllm.serving.test."


async def until(predicate: Callable[[], object]) -> None:
    async with asyncio.timeout(30):  # a bound for a slow machine, not a pace
        while not predicate():  # noqa: ASYNC110 (pool snapshots: nothing signals)
            await asyncio.sleep(0.01)


class DnsServer(asyncio.DatagramProtocol):
    """Answers A queries for NAME with ``addresses``; SERVFAIL while ``failing``."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.failing = False
        self.queries = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        self.queries += 1
        resp = dns.message.make_response(query)
        q = query.question[0]
        if self.failing:
            resp.set_rcode(dns.rcode.SERVFAIL)
        elif q.name.to_text() == NAME and q.rdtype == dns.rdatatype.A and self.addresses:
            resp.answer.append(dns.rrset.from_text_list(NAME, 1, "IN", "A", self.addresses))
        elif q.name.to_text() != NAME:
            resp.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(resp.to_wire(), addr)  # type: ignore[attr-defined]


async def test_system_resolver_finds_localhost():
    seen: list[dict[str, str]] = []
    src = DnsSource(DnsDiscovery(name="localhost", port=8123, interval_s=0.05))
    task = asyncio.create_task(src.run(seen.append))
    try:
        await until(lambda: seen)
        assert "http://127.0.0.1:8123" in seen[0].values()
        assert all(n.startswith("localhost-") and "127" not in n for n in seen[0])
        assert src.status.up and src.status.engines == len(seen[0])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_name_with_several_addresses_becomes_engines(tmp_path):
    (tmp_path / "b").mkdir()
    port = free_port()
    args = ("--served-model-name", "m", "--profile", "instant", "--port", str(port))
    loop = asyncio.get_running_loop()
    server = DnsServer()
    transport, _ = await loop.create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0))
    dns_port = transport.get_extra_info("sockname")[1]
    with (
        run_proc(gantry_cmd("sim", "--host", "127.0.0.1", *args), port, tmp_path, wait=False),
        run_proc(gantry_cmd("sim", "--host", "127.0.0.2", *args), port, tmp_path / "b", wait=False),
    ):
        for host in ("127.0.0.1", "127.0.0.2"):
            await asyncio.to_thread(wait_http, f"http://{host}:{port}")
        cfg = DnsDiscovery(
            name=NAME,
            port=port,
            nameserver=f"127.0.0.1:{dns_port}",
            interval_s=0.05,
            drain_grace_s=1.0,
            backoff_initial_s=0.05,
        )
        server.addresses = ["127.0.0.1", "127.0.0.2"]
        events: list[tuple[str, str]] = []
        src = DnsSource(cfg, lambda s, e: events.append((s, e)))
        async with (
            EnginePool((), HealthConfig(interval_s=0.1)) as pool,
            Discovery(pool, [src], on_event=lambda s, e: events.append((s, e))) as disc,
        ):

            def healthy() -> set[str]:
                return {pool.spec_of(e.name).url for e in pool.snapshot.healthy_for("m")}

            await until(
                lambda: healthy() == {f"http://127.0.0.1:{port}", f"http://127.0.0.2:{port}"}
            )
            assert all(n.startswith("vllm-") for n in pool.names()) and set(disc.owned) == set(
                pool.names()
            )
            # one address leaves the answer: its engine is drained and removed
            server.addresses = ["127.0.0.2"]
            await until(
                lambda: [pool.spec_of(n).url for n in pool.names()] == [f"http://127.0.0.2:{port}"]
            )
            assert ("dns", "removed") in events
            # the DNS server fails: the last set stays
            server.failing = True
            await until(lambda: src.status.errors >= 2)
            assert not src.status.up and len(pool.names()) == 1
            server.failing = False
            server.addresses = ["127.0.0.1", "127.0.0.2"]
            await until(lambda: len(healthy()) == 2)
            assert src.status.up
    transport.close()
