"""Uploaded and generated files: metadata in SQL, content behind a small storage
interface (a directory today; an object store would implement the same four calls).

Every read is scoped to a tenant: another tenant's file is simply not found.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gantry.state.sql import files

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ContentStorage(Protocol):
    """Where file contents live, by name."""

    async def put(self, name: str, data: bytes) -> None: ...

    async def read(self, name: str, offset: int = 0, length: int = -1) -> bytes: ...

    async def delete(self, name: str) -> None: ...


class DirectoryStorage:
    """Contents as files in one directory, written atomically (temp file, fsync,
    rename), so a crash leaves either the old content or the new, never half."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        if not _ID.match(name):
            raise ValueError(f"bad content name {name!r}")
        return self.root / name

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, self._path(name), data)

    def _put(self, path: Path, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    async def read(self, name: str, offset: int = 0, length: int = -1) -> bytes:
        return await asyncio.to_thread(self._read, self._path(name), offset, length)

    @staticmethod
    def _read(path: Path, offset: int, length: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    async def delete(self, name: str) -> None:
        path = self._path(name)
        await asyncio.to_thread(path.unlink, True)

    def __repr__(self) -> str:
        return f"<DirectoryStorage {self.root}>"


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    tenant: str
    filename: str
    purpose: str
    bytes: int
    created_at: float

    def openai(self) -> dict[str, Any]:
        """The OpenAI ``file`` object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": int(self.created_at),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


class FileStore:
    def __init__(self, engine: AsyncEngine, storage: ContentStorage) -> None:
        self.engine = engine
        self.storage = storage

    async def create(
        self, file_id: str, tenant: str, filename: str, purpose: str, data: bytes
    ) -> FileRecord:
        """Content first, then the row: a crash between leaves an orphan content file,
        never a row without content. Creating an existing id replaces nothing."""
        rec = FileRecord(file_id, tenant, filename, purpose, len(data), time.time())
        await self.storage.put(file_id, data)
        async with self.engine.begin() as conn:
            found = await conn.execute(select(files.c.id).where(files.c.id == file_id))
            if found.first() is None:
                await conn.execute(insert(files).values(**_row(rec)))
        return rec

    async def get(self, tenant: str | None, file_id: str) -> FileRecord | None:
        """The file, if ``tenant`` owns it (None: any tenant's, for admins)."""
        q = select(files).where(files.c.id == file_id)
        if tenant is not None:
            q = q.where(files.c.tenant == tenant)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return FileRecord(**row._mapping) if row is not None else None

    async def page(
        self, tenant: str | None, *, purpose: str | None, limit: int, after: str | None
    ) -> list[FileRecord]:
        q = select(files)
        if tenant is not None:
            q = q.where(files.c.tenant == tenant)
        if purpose:
            q = q.where(files.c.purpose == purpose)
        if after:
            q = q.where(files.c.id < after)  # newest first; ids sort by creation (new_id)
        async with self.engine.connect() as conn:
            rows = await conn.execute(q.order_by(files.c.id.desc()).limit(limit))
            return [FileRecord(**r._mapping) for r in rows]

    async def read(self, rec: FileRecord, offset: int = 0, length: int = -1) -> bytes:
        return await self.storage.read(rec.id, offset, length)

    async def delete(self, rec: FileRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(files).where(files.c.id == rec.id))
        await self.storage.delete(rec.id)


def new_id(prefix: str) -> str:
    """``prefix-<time><random>``: unique, and sorting by id sorts by creation."""
    return f"{prefix}-{time.time_ns():x}{os.urandom(6).hex()}"


def _row(rec: FileRecord) -> dict[str, Any]:
    return {
        "id": rec.id,
        "tenant": rec.tenant,
        "filename": rec.filename,
        "purpose": rec.purpose,
        "bytes": rec.bytes,
        "created_at": rec.created_at,
    }
