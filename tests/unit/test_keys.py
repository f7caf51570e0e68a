"""Key status from revocation and expiry times, no database."""

from __future__ import annotations

import pytest

from gantry.state.keys import KeyRecord

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
