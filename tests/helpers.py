"""Start real servers (simulator, gateway) as subprocesses on loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

from gantry.netutil import free_port

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


class ManualClock:
    """A clock the test moves (``clock.now += 30``): time passes without waiting."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def require_redis() -> Any:
    """The redis module, after checking the local Redis answers (skip the test if not)."""
    import pytest

    redis = pytest.importorskip("redis")
    try:
        redis.Redis(host="127.0.0.1", port=6379).ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("Redis is not running")
    return redis


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, what: str = "the condition") -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    The timeout is a generous bound for a slow or busy machine, never a pacing device:
    tests wait on what they need (a metric, a log line, a status), not for a while."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.05)


def wait_http(
    url: str,
    timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
    path: str = "/health",
    headers: dict[str, str] | None = None,
    verify: bool = True,
) -> None:
    def up() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            return (
                httpx.get(url + path, headers=headers, timeout=2, verify=verify).status_code == 200
            )
        except httpx.HTTPError:
            return False

    wait_until(up, timeout, f"{url}{path} answering 200")


def wait_key_active(url: str, key: str, timeout: float = 30.0) -> None:
    """Wait until the gateway accepts a key created after it started (its key refresh).

    ``GET /v1/models`` is authenticated but charges no rate limit."""
    wait_until(
        lambda: (
            httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code
            != 401
        ),
        timeout,
        "the gateway accepting a new key",
    )


class Proc:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, port: int, log: Path) -> None:
        self.proc, self.url, self.port, self.log = proc, url, port, log

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def gantry_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gantry", *args]


@contextmanager
def run_proc(
    args: list[str],
    port: int,
    tmp: Path,
    *,
    health: str = "/health",
    env: dict[str, str] | None = None,
    wait: bool = True,
    timeout: float = 40.0,
) -> Iterator[Proc]:
    log = tmp / f"proc-{port}.log"
    full_env = {**os.environ, **(env or {})}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            args, stdout=fh, stderr=subprocess.STDOUT, env=full_env, stdin=subprocess.DEVNULL
        )
    p = Proc(proc, f"http://127.0.0.1:{port}", port, log)
    try:
        if wait:
            wait_http(p.url, timeout, proc, health)
        yield p
    finally:
        p.stop()


@contextmanager
def sim(tmp: Path, *extra: str, port: int | None = None, **kw: object) -> Iterator[Proc]:
    port = port or free_port()
    with run_proc(gantry_cmd("sim", "--port", str(port), *extra), port, tmp, **kw) as p:  # type: ignore[arg-type]
        yield p


@contextmanager
def gateway(
    tmp: Path,
    *extra: str,
    port: int | None = None,
    secure: bool = False,
    env: dict[str, str] | None = None,
    **kw: object,
) -> Iterator[Proc]:
    """A gateway subprocess; auth off unless ``secure`` (security has its own tests)."""
    port = port or free_port()
    args = gantry_cmd("serve", "--port", str(port), *extra)
    base = {
        "GANTRY_SECURITY__DATABASE_URL": f"sqlite:///{tmp}/gantry-{port}.db",
        "GANTRY_SHUTDOWN__READINESS_DELAY_S": "0",  # tests stop gateways at once
    }
    if not secure:
        base["GANTRY_SECURITY__AUTH"] = "off"
    kw.setdefault("health", "/readyz")
    with run_proc(args, port, tmp, env={**base, **(env or {})}, **kw) as p:  # type: ignore[arg-type]
        yield p


def keys(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``gantry keys ARGS`` against the key table at ``db``."""
    return subprocess.run(
        gantry_cmd("keys", *args),
        capture_output=True,
        text=True,
        env={"GANTRY_SECURITY__DATABASE_URL": db, "PATH": "/usr/bin"},
        timeout=60,
    )


def new_key(db: str, *args: str) -> tuple[str, str]:
    """A new key (secret, id) made with ``gantry keys create ARGS``."""
    r = keys(db, "create", *args)
    assert r.returncode == 0, r.stderr
    secret = r.stdout.strip()
    return secret, secret.split("_")[1]


def bearer(k: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {k}"} if k else {}


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """A new, empty PostgreSQL database on the local server (dropped afterwards): its
    URL. Skips the test when PostgreSQL or asyncpg is not there."""
    import asyncio
    import uuid

    import pytest

    asyncpg = pytest.importorskip("asyncpg")
    dbname = f"gantry_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="test")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f"CREATE DATABASE {dbname}"))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL not available: {exc}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{dbname}"
    finally:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"))
