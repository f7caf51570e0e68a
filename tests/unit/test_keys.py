"""The key store: status from revocation and expiry times; ill-typed values refused
by the store itself (whatever its caller checked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gantry.state.keys import KeyRecord, KeyStore
from gantry.state.sql import make_engine, migrate

NOW = 1_000.0


def record(expires_at: float | None, revoked_at: float | None) -> KeyRecord:
    return KeyRecord("id", "t", "", "user", "standard", (), None, 0.0, expires_at, revoked_at)


@pytest.mark.parametrize(
    ("expires_at", "revoked_at", "status"),
    [
        (None, None, "active"),
        (NOW + 1, None, "active"),
        (NOW, None, "expired"),
        (NOW - 1, None, "expired"),
        (None, NOW - 1, "revoked"),
        (NOW - 1, NOW - 1, "revoked"),
    ],
)
def test_status(expires_at, revoked_at, status):
    rec = record(expires_at, revoked_at)
    assert rec.status(NOW) == status
    assert rec.active(NOW) == (status == "active")


@pytest.fixture
async def store(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path}/keys.db")
    await migrate(engine)
    yield KeyStore(engine)
    await engine.dispose()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tenant", "", "tenant must be"),
        ("tenant", 5, "tenant must be"),
        ("tenant", "x" * 129, "tenant must be"),
        ("role", "root", "role must be one of"),
        ("tier", "", "tier must be"),
        ("name", None, "name must be"),
        ("name", "a\nb", "name must be"),
        ("models", "qwen", "models must be a tuple"),
        ("models", ["qwen"], "models must be a tuple"),
        ("models", (1,), "models must be a tuple"),
        ("models", ("",), "models must be a tuple"),
        ("models", ("a,b",), "models must be a tuple"),
        ("priority", "high", "priority must be an integer"),
        ("priority", True, "priority must be an integer"),
        ("priority", 1.0, "priority must be an integer"),
        ("priority", 10**6, "priority must be an integer from -1000 to 1000"),
        ("expires_at", "soon", "expires_at must be"),
        ("expires_at", float("inf"), "expires_at must be"),
    ],
)
async def test_create_refuses_ill_typed_values(store, field, value, message):
    with pytest.raises(ValueError, match=message):
        await store.create(**{"tenant": "t", field: value})
    assert await store.list_keys() == []


async def test_create_keeps_good_values(store):
    _, rec = await store.create(tenant="t", models=("a", "b"), priority=-3, expires_at=1e10)
    got = await store.get(rec.key_id)
    assert got is not None
    assert (got.models, got.priority, got.expires_at) == (("a", "b"), -3, 1e10)
