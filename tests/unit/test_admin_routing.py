"""Live routing changes through the admin API: validated whole, audited, no request lost."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.memory_engine import FakeEngine, MemoryGateway, chat


async def admin_gateway(tmp_path, engines):
    g = MemoryGateway(tmp_path, engines, security={"auth": "required"})
    await g.__aenter__()
    keys = g.gw.security.keys
    assert keys is not None
    admin, _ = await keys.create(tenant="ops", role="admin")
    user, _ = await keys.create(tenant="t")
    await g.gw.auth.refresh()
    return g, {"authorization": f"Bearer {admin}"}, {"authorization": f"Bearer {user}"}


async def call(g, method, path, body=None, headers=None):
    raw = orjson.dumps(body) if body is not None else b""
    code, _, out = await g.send(path, method=method, raw=raw, headers=headers)
    return code, orjson.loads(out) if out else None


def test_splits_aliases_and_tiers_change_live_and_are_audited(tmp_path):
    async def main() -> None:
        g, admin, user = await admin_gateway(
            tmp_path, [FakeEngine("a", ("v1",)), FakeEngine("b", ("v2",))]
        )
        try:
            split = {"targets": [{"model": "v2", "weight": 1}], "sticky": "none"}
            code, data = await call(g, "PUT", "/admin/splits/chat", split, admin)
            assert code == 200 and data["changed"]["sections"] == ["splits"]
            code, headers, body = await g.send("/v1/chat/completions", chat("chat"), headers=user)
            assert code == 200 and headers["x-gantry-arm"] == "v2"
            code, _ = await call(g, "PUT", "/admin/aliases/gpt-4", {"target": "v1"}, admin)
            assert code == 200
            code, _, body = await g.send("/v1/chat/completions", chat("gpt-4"), headers=user)
            assert code == 200 and orjson.loads(body)["engine"] == "a"
            code, _ = await call(g, "PUT", "/admin/tiers/gold", {"rpm": 5}, admin)
            assert code == 200 and g.gw.cfg.tiers["gold"].rpm == 5
            code, _ = await call(g, "DELETE", "/admin/splits/chat", None, admin)
            assert code == 200 and "chat" not in g.gw.cfg.splits
            code, state = await call(g, "GET", "/admin/routing", None, admin)
            assert state["aliases"] == {"gpt-4": "v1"} and state["splits"] == {}
            keys = g.gw.security.keys
            assert keys is not None
            actions = [row["action"] for row in await keys.audit_log()]
            for a in ("split.put", "alias.put", "tier.put", "split.delete"):
                assert a in actions
        finally:
            await g.__aexit__(None, None, None)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"),
    [
        ("PUT", "/admin/splits/chat", {"targets": []}, 400, "targets"),
        ("PUT", "/admin/splits/chat", {"targets": [{"model": "v1", "weight": -1}]}, 400, "weight"),
        (
            "PUT",
            "/admin/splits/chat",
            {"targets": [{"model": "v1", "weight": 1}], "x": 1},
            400,
            "x",
        ),
        ("PUT", "/admin/aliases/chat", {"target": 5}, 400, "target"),
        ("PUT", "/admin/aliases/v1x", {"target": "v1", "more": 1}, 400, "target"),
        ("PUT", "/admin/tiers/gold", {"rpm": "lots"}, 400, "rpm"),
        ("POST", "/admin/engines", {"url": "ftp://x"}, 400, "url"),
        ("POST", "/admin/engines", [1, 2], 400, "object"),
        ("DELETE", "/admin/engines/nope", None, 404, "nope"),
        ("DELETE", "/admin/aliases/nope", None, 404, "nope"),
        ("POST", "/admin/engines/nope/drain", None, 404, "nope"),
        ("POST", "/admin/engines/a/explode", None, 404, "explode"),
        ("GET", "/admin/splits/chat", None, 405, "GET"),
        ("POST", "/admin/reload", None, 400, "reload"),  # no configuration source here
    ],
)
def test_bad_changes_are_400_and_change_nothing(tmp_path, method, path, body, status, needle):
    async def main() -> None:
        g, admin, _ = await admin_gateway(tmp_path, [FakeEngine("a", ("v1",))])
        try:
            before = g.gw.cfg
            code, data = await call(g, method, path, body, admin)
            assert code == status, data
            assert needle in data["error"]["message"] or needle == data["error"].get("param")
            assert g.gw.cfg is before
        finally:
            await g.__aexit__(None, None, None)

    asyncio.run(main())


def test_engines_added_drained_and_removed_without_losing_a_request(tmp_path):
    async def main() -> None:
        a, b = FakeEngine("a"), FakeEngine("b")
        g, admin, user = await admin_gateway(tmp_path, [a])
        g.engines["b"] = b  # the memory transport the added spec resolves to
        try:
            code, data = await call(
                g, "POST", "/admin/engines", {"url": "http://b", "name": "b"}, admin
            )
            assert code == 201 and data["changed"]["engines_added"] == ["b"]
            code, _ = await call(g, "POST", "/admin/engines/a/drain", None, admin)
            assert code == 200
            for _ in range(4):
                code, _, body = await g.send("/v1/chat/completions", chat(), headers=user)
                assert code == 200 and orjson.loads(body)["engine"] == "b"
            await call(g, "POST", "/admin/engines/a/undrain", None, admin)
            # a request in flight on b while b is removed: it finishes
            b.gate = asyncio.Event()
            b.entered.clear()
            a.default = "503"  # so the request goes to b
            g.gw.pool.drain("a")
            inflight = asyncio.create_task(g.send("/v1/chat/completions", chat(), headers=user))
            await asyncio.wait_for(b.entered.wait(), 30)
            g.gw.pool.undrain("a")
            a.default = "ok"
            code, data = await call(g, "DELETE", "/admin/engines/b", None, admin)
            assert code == 200 and data["changed"]["engines_removed"] == ["b"]
            code, _, body = await g.send("/v1/chat/completions", chat(), headers=user)
            assert code == 200 and orjson.loads(body)["engine"] == "a"  # b takes no more
            b.gate.set()
            code, _, body = await inflight
            assert code == 200 and orjson.loads(body)["engine"] == "b"
            for _ in range(200):  # b leaves once its request is done
                if "b" not in g.gw.pool.names():
                    break
                await asyncio.sleep(0.01)
            assert "b" not in g.gw.pool.names()
        finally:
            await g.__aexit__(None, None, None)

    asyncio.run(main())
