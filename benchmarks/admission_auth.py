"""Per-request cost of the security admission path: authenticate the key, check and
charge its limits, settle afterwards — with the memory store and with Redis.

    python benchmarks/admission_auth.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid

from gantry.config import GatewayConfig
from gantry.gateway.auth import API
from gantry.gateway.security import Security
from gantry.observability.metrics import GatewayMetrics


async def measure(store: str, n: int) -> tuple[float, float]:
    db = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    cfg = GatewayConfig.model_validate(
        {
            "security": {"database_url": db},
            "ratelimit": {"store": store, "key_prefix": f"bench-{uuid.uuid4().hex[:6]}:"},
            "tiers": {"standard": {"rpm": 10**9, "tpm": 10**12, "concurrent": 10**6}},
            "ledger": {"enabled": False},
        }
    )
    sec = Security(cfg, GatewayMetrics())
    await sec.start()
    assert sec.keys is not None
    secret, _ = await sec.keys.create(tenant="bench")
    await sec.auth.refresh()
    auth = f"Bearer {secret}"
    headers: list[tuple[bytes, bytes]] = []
    t0 = time.perf_counter()
    for _ in range(n):
        ident = sec.auth.check(API, auth, "/v1/chat/completions")
    t_auth = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for i in range(n):
        headers.clear()
        lease = await sec.acquire(ident, f"r{i}", 200, 64, headers)
        assert lease is not None
        await sec.settle(lease, 100)
    t_limits = (time.perf_counter() - t0) / n
    await sec.aclose()
    return t_auth, t_limits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    a = ap.parse_args()
    print("security admission cost per request (one core)")
    for store in ("memory", "redis"):
        t_auth, t_limits = asyncio.run(measure(store, a.requests))
        print(
            f"  {store:<6}  authenticate: {t_auth * 1e6:6.1f} us   "
            f"limits (check+charge, then settle): {t_limits * 1e6:7.1f} us   "
            f"total: {(t_auth + t_limits) * 1e6:7.1f} us"
        )


if __name__ == "__main__":
    main()
