"""GET /admin/status: one page of the gateway's state, for admins only, naming engines
without their addresses."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from gantry.engines.breaker import Breaker, BreakerState
from tests.memory_engine import FakeEngine, MemoryGateway, chat
from tests.unit.test_admin_routing import admin_gateway, call


def test_status_page(tmp_path):
    async def main() -> None:
        g, admin, user = await admin_gateway(
            tmp_path, [FakeEngine("a", ("v1",)), FakeEngine("b", ("v2",))]
        )
        try:
            split = {"targets": [{"model": "v1", "weight": 3}, {"model": "v2", "weight": 1}]}
            assert (await call(g, "PUT", "/admin/splits/chat", split, admin))[0] == 200
            code, _, _ = await g.send("/v1/chat/completions", chat("v1"), headers=user)
            assert code == 200
            g.gw.pool.drain("b")
            code, page = await call(g, "GET", "/admin/status", None, admin)
            assert code == 200
            engines = {e["name"]: e for e in page["engines"]}
            assert set(engines) == {"a", "b"}
            a, b = engines["a"], engines["b"]
            assert a["healthy"] and a["breaker"] == "closed" and a["models"] == ["v1"]
            assert a["source"] == "static" and a["inflight"] == 0
            assert b["draining"] and "draining" in b["reason"]
            assert page["queues"] == {"v1": 0, "v2": 0}
            assert page["splits"]["chat"]["targets"] == [
                {"arm": "v1", "weight": 3.0},
                {"arm": "v2", "weight": 1.0},
            ]
            assert page["limits"] == {
                "store": "memory",
                "reachable": True,
                "rate_limits_fail_open": True,
                "quotas_fail_open": False,
            }
            assert page["ledger"]["enabled"] and page["ledger"]["database"] == "sqlite"
            assert {"queued", "written", "dropped"} <= set(page["ledger"])
            assert page["discovery"] == [] and page["ready"] is False  # v2 only drains
            assert "http://" not in orjson.dumps(page).decode()  # engines named, not located
            # an open breaker shows
            g.gw.dispatcher.breakers["a"] = BreakerState(Breaker.OPEN, opened_at=time.monotonic())
            code, page = await call(g, "GET", "/admin/status", None, admin)
            assert {e["name"]: e["breaker"] for e in page["engines"]}["a"] == "open"
            # admins only; the errors are OpenAI error JSON
            code, err = await call(g, "GET", "/admin/status", None, user)
            assert code == 403 and err["error"]["type"] == "permission_error"
            code, err = await call(g, "GET", "/admin/status", None, None)
            assert code == 401 and err["error"]["code"] == "invalid_api_key"
            code, err = await call(g, "POST", "/admin/status", {}, admin)
            assert code == 405 and "error" in err
        finally:
            await g.__aexit__(None, None, None)

    asyncio.run(main())


@pytest.mark.parametrize("path", ["/admin/status/x", "/admin/statusx"])
def test_unknown_status_paths(tmp_path, path):
    async def main() -> None:
        g, admin, _ = await admin_gateway(tmp_path, [FakeEngine("a", ("v1",))])
        try:
            code, err = await call(g, "GET", path, None, admin)
            assert code == 404 and "error" in err
        finally:
            await g.__aexit__(None, None, None)

    asyncio.run(main())


def test_status_with_auth_off_is_refused(tmp_path):
    async def main() -> None:
        async with MemoryGateway(tmp_path, [FakeEngine("a", ("v1",))]) as g:
            code, err = await call(g, "GET", "/admin/status")
            assert code == 403 and "security.auth" in err["error"]["message"]

    asyncio.run(main())
