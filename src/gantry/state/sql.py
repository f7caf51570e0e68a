"""The SQL store: one schema for API keys, the usage ledger and the audit log.

SQLite (aiosqlite) by default, PostgreSQL (asyncpg) by URL; SQLAlchemy 2 core, no ORM.
Migrations are an ordered list applied once each, recorded in ``gantry_schema``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = MetaData()

schema_version = Table("gantry_schema", metadata, Column("version", Integer, primary_key=True))

api_keys = Table(
    "gantry_api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("secret_hash", String(64), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("name", String(256), nullable=False, default=""),
    Column("role", String(16), nullable=False),
    Column("tier", String(64), nullable=False),
    Column("models", Text, nullable=False, default=""),  # comma-separated; empty = all
    Column("priority", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)

usage = Table(
    "gantry_usage",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("ts", Float, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("model", String(256), nullable=False),
    Column("engine", String(128), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("status", Integer, nullable=False),
    Index("ix_gantry_usage_ts", "ts"),
    Index("ix_gantry_usage_key", "key_id", "ts"),
)

audit = Table(
    "gantry_audit",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("ts", Float, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(128), nullable=False, default=""),
    Column("detail", Text, nullable=False, default=""),
)

files = Table(
    "gantry_files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("filename", String(512), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_gantry_files_tenant", "tenant", "created_at"),
)

batches = Table(
    "gantry_batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("identity", Text, nullable=False),  # the creating key's identity (JSON)
    Column("endpoint", String(64), nullable=False),
    Column("input_file_id", String(64), nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("times", Text, nullable=False, default="{}"),  # status -> when it was reached
    Column("metadata", Text, nullable=True),
    Column("errors", Text, nullable=True),  # batch-level errors (JSON list)
    Column("output_file_id", String(64), nullable=True),
    Column("error_file_id", String(64), nullable=True),
    Column("total", Integer, nullable=False, default=0),
    Column("completed", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("owner", String(64), nullable=True),  # replica validating or finalizing it
    Column("lease_until", Float, nullable=False, default=0.0),
    Index("ix_gantry_batches_tenant", "tenant", "created_at"),
    Index("ix_gantry_batches_status", "status"),
)

batch_lines = Table(
    "gantry_batch_lines",
    metadata,
    Column("batch_id", String(64), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("custom_id", String(512), nullable=False),
    Column("state", String(8), nullable=False),  # pending, claimed, done
    Column("owner", String(64), nullable=True),
    Column("lease_until", Float, nullable=False, default=0.0),  # also: not before
    Column("attempts", Integer, nullable=False, default=0),
    Column("offset", BigInteger, nullable=False),
    Column("length", Integer, nullable=False),
    Column("ok", Integer, nullable=True),  # 1: output file, 0: error file
    Column("result", Text, nullable=True),  # the output or error line
    Index("ix_gantry_batch_lines_state", "state", "lease_until"),
)

# version -> tables created at that version (append new steps; never edit old ones)
MIGRATIONS: list[tuple[int, list[Table]]] = [
    (1, [api_keys, usage, audit]),
    (2, [files, batches, batch_lines]),
]


def _creator(table: Table) -> Callable[[Connection], None]:
    def create(conn: Connection) -> None:
        table.create(conn, checkfirst=True)

    return create


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url[len("postgresql://") :]
    elif url.startswith("sqlite:///"):
        url = "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    kw: dict[str, object] = {}
    if url.startswith("sqlite"):
        kw["connect_args"] = {"timeout": 30}
    engine = create_async_engine(url, **kw)
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL: readers (``gantry usage``, the admin API) do not block the gateway's writes,
    and a commit costs no fsync of the database file (``synchronous=NORMAL`` is durable
    across a crash of the process; a power cut may lose the last commits)."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


async def migrate(engine: AsyncEngine, *, tries: int = 5) -> int:
    """Apply pending migrations; returns the schema version.

    Several processes may start at once (gateway workers, replicas sharing one
    database): PostgreSQL serialises them with an advisory lock; elsewhere a loser of
    the race sees "already exists" and tries again once the winner has committed."""
    for attempt in range(tries):
        try:
            return await _migrate_once(engine)
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == tries - 1:
                raise
            await asyncio.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


async def _migrate_once(engine: AsyncEngine) -> int:
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(7340031)"))
        await conn.run_sync(lambda c: schema_version.create(c, checkfirst=True))
        current = (await conn.execute(select(schema_version.c.version))).scalars().all()
        done = max(current, default=0)
        for version, tables in MIGRATIONS:
            if version <= done:
                continue
            for table in tables:
                await conn.run_sync(_creator(table))
            await conn.execute(schema_version.insert().values(version=version))
            done = version
    return done
