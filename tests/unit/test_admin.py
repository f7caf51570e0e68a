"""The admin API in process, over a real SQLite key table: schemas, routes, answers."""

from __future__ import annotations

import time
import typing
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from gantry.config import GatewayConfig
from gantry.errors import ClientError, MethodNotAllowed, NotFound
from gantry.gateway.admin import AdminAPI, route
from gantry.gateway.admin_schema import Role
from gantry.gateway.auth import Authenticator, Identity
from gantry.gateway.openapi import openapi_document
from gantry.state.keys import ROLES, KeyStore
from gantry.state.ledger import UsageLedger, UsageRecord
from gantry.state.sql import make_engine, migrate

ADMIN = Identity("adm000000000", "ops", "admin", "standard")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[AdminAPI]:
    cfg = GatewayConfig.model_validate({"security": {"auth": "required"}})
    engine = make_engine(f"sqlite:///{tmp_path}/keys.db")
    await migrate(engine)
    keys = KeyStore(engine)
    ledger = UsageLedger(engine)
    yield AdminAPI(cfg, keys=keys, auth=Authenticator(cfg, keys), ledger=ledger)
    await engine.dispose()


async def create(api: AdminAPI, body: bytes) -> tuple[int, typing.Any]:
    return await api.handle("POST", "/admin/keys", body, "", ADMIN)


# (body, param the 400 names, words in its message)
BAD_BODIES = [
    (b'{"tenant":"t","priority":"high"}', "priority", "priority: must be an integer"),
    (b'{"tenant":"t","priority":1.5}', "priority", "priority: must be an integer"),
    (b'{"tenant":"t","priority":true}', "priority", "priority: must be an integer"),
    (b'{"tenant":"t","priority":5000}', "priority", "priority: must be <= 1000"),
    (b'{"tenant":"t","models":"qwen"}', "models", "models: must be a list of strings"),
    (b'{"tenant":"t","models":[1]}', "models", "models[0]: must be a string"),
    (b'{"tenant":"t","models":[""]}', "models", "models[0]: must not be empty"),
    (b'{"tenant":"t","models":["a,b"]}', "models", "commas"),
    (b'{"tenant":"t","role":"root"}', "role", "role: must be one of 'admin', 'user' or"),
    (b'{"tenant":"t","role":1}', "role", "role: must be one of"),
    (b'{"tenant":"t","tier":"gold"}', "tier", "tier: unknown tier 'gold' (configured: free,"),
    (b'{"tenant":"t","tier":7}', "tier", "tier: must be a string"),
    (b'{"tenant":"t","expires_in_s":-1}', "expires_in_s", "expires_in_s: must be > 0"),
    (b'{"tenant":"t","expires_in_s":0}', "expires_in_s", "expires_in_s: must be > 0"),
    (b'{"tenant":"t","expires_in_s":"soon"}', "expires_in_s", "expires_in_s: must be a number"),
    (b'{"tenant":"t","expires_in_s":NaN}', "expires_in_s", "must be a finite number"),
    (b'{"tenant":"t","expires_in_s":1e12}', "expires_in_s", "expires_in_s: must be <="),
    (b'{"tenant":"t","name":5}', "name", "name: must be a string"),
    (b'{"tenant":"t","name":"' + b"x" * 201 + b'"}', "name", "at most 200 characters"),
    (b"{}", "tenant", "tenant: is required"),
    (b"", "tenant", "tenant: is required"),
    (b'{"tenant":""}', "tenant", "tenant: must not be empty"),
    (b'{"tenant":5}', "tenant", "tenant: must be a string"),
    (b'{"tenant":null}', "tenant", "tenant: must be a string"),
    (b'{"tenant":"a\\u0000b"}', "tenant", "tenant: must not contain control characters"),
    (b'{"tenant":"' + b"x" * 129 + b'"}', "tenant", "at most 128 characters"),
    (b'{"tenant":"t","admin":true}', "admin", "admin: is not a known field"),
    (b'[{"tenant":"t"}]', "body", "Request body must be a JSON object."),
    (b'"t"', "body", "Request body must be a JSON object."),
    (b'{"tenant":', "body", "Request body is not valid JSON."),
    (b"\xff", "body", "Request body is not valid JSON."),
]


@pytest.mark.parametrize(("body", "param", "message"), BAD_BODIES, ids=[b[1] for b in BAD_BODIES])
async def test_bad_create_bodies_are_400_naming_the_field(api, body, param, message):
    with pytest.raises(ClientError) as info:
        await create(api, body)
    err = info.value
    assert (err.status, err.param) == (400, param)
    assert message in err.message
    assert orjson.loads(err.body())["error"] == {
        "message": err.message,
        "type": "invalid_request_error",
        "param": param,
        "code": None,
    }
    assert await api.keys.list_keys() == []  # type: ignore[union-attr]  # nothing stored


GOOD_BODIES = [
    (b'{"tenant":"t"}', {"role": "user", "tier": "standard", "models": (), "priority": None}),
    (
        b'{"tenant":"t","role":"metrics","tier":"free","models":["qwen","m/2"],"priority":-5,'
        b'"name":"ci bot","expires_in_s":60}',
        {"role": "metrics", "tier": "free", "models": ("qwen", "m/2"), "priority": -5},
    ),
    (b'{"tenant":"t","priority":null,"expires_in_s":0.5}', {"priority": None}),
]


@pytest.mark.parametrize(("body", "want"), GOOD_BODIES)
async def test_good_create_bodies_store_well_typed_keys(api, body, want):
    t0 = time.time()
    status, data = await create(api, body)
    assert status == 201 and data["key"].startswith(f"gk_{data['id']}_")
    rec = await api.keys.get(data["id"])  # type: ignore[union-attr]
    assert rec is not None and rec.tenant == "t"
    for field, value in want.items():
        assert getattr(rec, field) == value, field
    assert all(isinstance(m, str) for m in rec.models)
    assert rec.priority is None or type(rec.priority) is int
    ttl = orjson.loads(body).get("expires_in_s")
    if ttl:
        assert rec.expires_at is not None and t0 + ttl <= rec.expires_at <= time.time() + ttl
    else:
        assert rec.expires_at is None
    assert data["id"] in api.auth._cache  # usable at once on this replica


async def test_list_revoke_rotate_audit(api):
    _, a = await create(api, b'{"tenant":"a"}')
    _, b = await create(api, b'{"tenant":"b","models":["m"]}')
    status, listed = await api.handle("GET", "/admin/keys", b"", "tenant=b", ADMIN)
    assert status == 200 and [k["id"] for k in listed["data"]] == [b["id"]]
    assert all("key" not in k for k in listed["data"])
    status, rot = await api.handle("POST", f"/admin/keys/{b['id']}/rotate", b"", "", ADMIN)
    assert status == 200 and rot["replaces"] == b["id"] and rot["models"] == ["m"]
    status, rev = await api.handle("POST", f"/admin/keys/{a['id']}/revoke", b"{}", "", ADMIN)
    assert (status, rev) == (200, {"id": a["id"], "revoked": True})
    with pytest.raises(ClientError, match="already revoked") as info:
        await api.handle("POST", f"/admin/keys/{a['id']}/revoke", b"", "", ADMIN)
    assert info.value.status == 400 and info.value.param == "key_id"
    _, log = await api.handle("GET", "/admin/audit", b"", "", ADMIN)
    assert {e["action"] for e in log["data"]} == {"key.create", "key.rotate", "key.revoke"}
    assert {e["actor"] for e in log["data"]} == {ADMIN.key_id}


async def test_usage_with_costs_and_by_validated(api):
    assert api.ledger is not None
    api.ledger.record(UsageRecord(time.time(), "r1", "k", "t", "m", "e", 10, 5, 0, 1.0, 200))
    status, data = await api.handle("GET", "/admin/usage", b"", "by=tenant", ADMIN)
    assert status == 200 and data["data"][0]["group"] == "t"
    assert data["data"][0]["prompt_tokens"] == 10 and "cost" in data["data"][0]


BAD_QUERIES = [
    ("/admin/usage", "by=week", "by", "by: must be one of 'key', 'model', 'tenant' or 'day'"),
    ("/admin/usage", "by=key&by=day", "by", "by: given more than once"),
    ("/admin/usage", "since=3", "since", "since: is not a known field"),
    ("/admin/keys", "tenant=", "tenant", "tenant: must not be empty"),
    ("/admin/keys", "limit=3", "limit", "limit: is not a known field"),
    ("/admin/audit", "x=1", "x", "x: is not a known field"),
]


@pytest.mark.parametrize(("path", "query", "param", "message"), BAD_QUERIES)
async def test_bad_queries_are_400_naming_the_parameter(api, path, query, param, message):
    with pytest.raises(ClientError) as info:
        await api.handle("GET", path, b"", query, ADMIN)
    assert (info.value.status, info.value.param, info.value.message) == (400, param, message)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [
        ("POST", "/admin/keys/0123456789ab/revoke", b"", 404, "key_id"),
        ("POST", "/admin/keys/0123456789ab/rotate", b"", 404, "key_id"),
        ("POST", "/admin/keys/0123456789ab/revoke", b'{"why":"x"}', 400, "why"),
        ("POST", "/admin/keys/0123456789ab/revoke", b"[]", 400, "body"),
    ],
)
async def test_key_operations(api, method, path, body, status, param):
    with pytest.raises(ClientError) as info:
        await api.handle(method, path, body, "", ADMIN)
    assert (info.value.status, info.value.param) == (status, param)


@pytest.mark.parametrize(
    ("method", "path", "want"),
    [
        ("GET", "/admin/keys", ("list", "")),
        ("POST", "/admin/keys", ("create", "")),
        ("POST", "/admin/keys/0123456789ab/revoke", ("revoke", "0123456789ab")),
        ("POST", "/admin/keys/0123456789ab/rotate", ("rotate", "0123456789ab")),
        ("GET", "/admin/audit", ("audit", "")),
        ("GET", "/admin/usage", ("usage", "")),
        ("DELETE", "/admin/keys", MethodNotAllowed),
        ("GET", "/admin/keys/0123456789ab/revoke", MethodNotAllowed),
        ("POST", "/admin/usage", MethodNotAllowed),
        ("POST", "/admin/keys/0123456789ab/delete", NotFound),
        ("POST", "/admin/keys/0123456789ab", NotFound),
        ("POST", "/admin/keys//revoke", NotFound),
        ("POST", "/admin/keys/../revoke", NotFound),
        ("POST", "/admin/keys/a\x00b/revoke", NotFound),
        ("GET", "/admin/keys/", NotFound),
        ("GET", "/admin/other", NotFound),
    ],
)
def test_route(method, path, want):
    if isinstance(want, tuple):
        assert route(method, path) == want
    else:
        with pytest.raises(want):
            route(method, path)


async def test_without_a_key_table_or_ledger(tmp_path):
    cfg = GatewayConfig.model_validate({"security": {"auth": "off"}})
    api = AdminAPI(cfg, keys=None, auth=Authenticator(cfg, None), ledger=None)
    with pytest.raises(ClientError, match=r"security\.auth: required"):
        await create(api, b'{"tenant":"t"}')
    with pytest.raises(ClientError, match="ledger is off"):
        await api.handle("GET", "/admin/usage", b"", "", ADMIN)
    assert repr(api) == "AdminAPI(keys=False, ledger=False)"


async def test_keys_are_made_with_auth_off(tmp_path):
    """auth off with the ledger on: a key table exists but the authenticator has no cache."""
    cfg = GatewayConfig.model_validate({"security": {"auth": "off"}})
    engine = make_engine(f"sqlite:///{tmp_path}/keys.db")
    await migrate(engine)
    keys = KeyStore(engine)
    api = AdminAPI(cfg, keys=keys, auth=Authenticator(cfg, None), ledger=None)
    status, made = await create(api, b'{"tenant":"t"}')
    assert status == 201
    path = f"/admin/keys/{made['id']}/rotate"
    assert (await api.handle("POST", path, b"", "", ADMIN))[0] == 200
    await engine.dispose()


def test_roles_match_the_key_store():
    assert typing.get_args(Role) == ROLES


def test_openapi_describes_the_admin_api_from_the_schemas():
    doc = openapi_document("0")
    create_op = doc["paths"]["/admin/keys"]["post"]
    assert create_op["security"] == [{"bearer": []}]
    assert "bearer" in doc["components"]["securitySchemes"]
    schema = doc["components"]["schemas"]["CreateKey"]
    assert schema["additionalProperties"] is False and schema["required"] == ["tenant"]
    assert schema["properties"]["priority"]["type"] == "integer"
    assert schema["properties"]["priority"]["nullable"] is True  # OpenAPI 3.0, not anyOf
    assert schema["properties"]["expires_in_s"]["exclusiveMinimum"] is True
    assert "anyOf" not in orjson.dumps(doc).decode()
    for path in ("/admin/keys/{key_id}/revoke", "/admin/audit", "/admin/usage"):
        assert path in doc["paths"]
