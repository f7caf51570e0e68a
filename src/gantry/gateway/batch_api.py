"""``/v1/files`` and ``/v1/batches``: OpenAI's Files and Batch APIs over the SQL store.

Everything is scoped to the caller's tenant (an admin key sees every tenant's): another
tenant's file or batch is a 404, as if it did not exist. The work itself is done by
``batch_runner``; these handlers only read and write rows and files.
"""

from __future__ import annotations

import json
import time
from typing import Any

import orjson

from gantry.config import GatewayConfig
from gantry.errors import ClientError, MethodNotAllowed, NotFound
from gantry.gateway import batch_policy as policy
from gantry.gateway.accounting import Record
from gantry.gateway.auth import Identity
from gantry.gateway.http import Exchange
from gantry.gateway.multipart import parse_form
from gantry.state.batches import BatchRecord, BatchStore
from gantry.state.files import FileStore, new_id

MAX_JSON = 64 * 1024  # a create-batch body
_CANCELLABLE = ("validating", "in_progress")


class BatchAPI:
    def __init__(self, cfg: GatewayConfig, files: FileStore, store: BatchStore) -> None:
        self.cfg = cfg
        self.files = files
        self.store = store
        self.on_change: Any = None  # called after a batch is created or cancelled

    # -- /v1/files ------------------------------------------------------------------------
    async def handle_files(self, x: Exchange, ident: Identity, rec: Record) -> None:
        parts = x.path.removeprefix("/v1/files").strip("/").split("/")
        if parts == [""]:
            if x.method == "POST":
                return _reply(x, rec, 200, await self._upload(x, ident))
            if x.method == "GET":
                return _reply(x, rec, 200, await self._list_files(x, ident))
        elif len(parts) == 1:
            f = await self._file(ident, parts[0])
            if x.method == "GET":
                return _reply(x, rec, 200, f.openai())
            if x.method == "DELETE":
                await self.files.delete(f)
                return _reply(x, rec, 200, {"id": f.id, "object": "file", "deleted": True})
        elif len(parts) == 2 and parts[1] == "content" and x.method == "GET":
            f = await self._file(ident, parts[0])
            rec.status = 200
            return x.reply(200, await self.files.read(f), b"application/octet-stream")
        else:
            raise NotFound(f"Unknown path {x.path}")
        raise MethodNotAllowed(f"Method {x.method} not allowed on {x.path}")

    async def _upload(self, x: Exchange, ident: Identity) -> dict[str, Any]:
        b = self.cfg.batches
        body = await x.read_body(upload_limit(self.cfg), self.cfg.security.body_timeout_s)
        form = parse_form(x.headers.get(b"content-type", ""), body)
        purpose = form["purpose"].data.decode("utf-8", "replace") if "purpose" in form else ""
        if purpose != "batch":
            raise ClientError(
                f"purpose must be 'batch' (the only purpose this server accepts), got {purpose!r}.",
                param="purpose",
            )
        part = form.get("file")
        if part is None:
            raise ClientError("The form has no 'file' part.", param="file")
        if len(part.data) > b.max_file_bytes:
            raise ClientError(
                f"The file is {len(part.data)} bytes; the limit is {b.max_file_bytes}.",
                param="file",
            )
        lines = sum(1 for _ in policy.lines_of(part.data))
        if lines == 0 or lines > b.max_lines:
            raise ClientError(
                f"A batch file holds 1 to {b.max_lines} JSONL requests; this one has {lines}.",
                param="file",
            )
        name = (part.filename or "upload.jsonl")[:512]
        f = await self.files.create(new_id("file"), ident.tenant, name, purpose, part.data)
        return f.openai()

    async def _list_files(self, x: Exchange, ident: Identity) -> dict[str, Any]:
        q = _query(x.query)
        limit = _limit(q, 10_000)
        rows = await self.files.page(
            _scope(ident), purpose=q.get("purpose"), limit=limit + 1, after=q.get("after")
        )
        return _page([f.openai() for f in rows[:limit]], len(rows) > limit)

    async def _file(self, ident: Identity, file_id: str) -> Any:
        f = await self.files.get(_scope(ident), file_id)
        if f is None:
            raise NotFound(f"No such file: {file_id}", param="file_id")
        return f

    # -- /v1/batches ----------------------------------------------------------------------
    async def handle_batches(self, x: Exchange, ident: Identity, rec: Record) -> None:
        parts = x.path.removeprefix("/v1/batches").strip("/").split("/")
        if parts == [""]:
            if x.method == "POST":
                return _reply(x, rec, 200, await self._create(x, ident))
            if x.method == "GET":
                return _reply(x, rec, 200, await self._list(x, ident))
        elif len(parts) == 1 and x.method == "GET":
            return _reply(x, rec, 200, await self.view(await self._batch(ident, parts[0])))
        elif len(parts) == 2 and parts[1] == "cancel" and x.method == "POST":
            b = await self._batch(ident, parts[0])
            if b.status not in _CANCELLABLE:
                raise ClientError(
                    f"Batch {b.id} is {b.status}; only a validating or in-progress batch "
                    "can be cancelled.",
                    param="batch_id",
                )
            await self.store.set_status(b.id, _CANCELLABLE, "cancelling", time.time())
            if self.on_change is not None:
                self.on_change()
            return _reply(x, rec, 200, await self.view(await self._batch(ident, b.id)))
        else:
            raise NotFound(f"Unknown path {x.path}")
        raise MethodNotAllowed(f"Method {x.method} not allowed on {x.path}")

    async def _create(self, x: Exchange, ident: Identity) -> dict[str, Any]:
        raw = await x.read_body(MAX_JSON, self.cfg.security.body_timeout_s)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ClientError(f"Request body is not valid JSON: {exc}", param="body") from None
        if not isinstance(body, dict):
            raise ClientError("Request body must be a JSON object.", param="body")
        endpoint = body.get("endpoint")
        if endpoint not in policy.ENDPOINTS:
            raise ClientError(
                f"endpoint must be one of {', '.join(policy.ENDPOINTS)}.", param="endpoint"
            )
        window = body.get("completion_window")
        seconds = (
            policy.window_seconds(window, self.cfg.batches.max_window_s)
            if isinstance(window, str)
            else None
        )
        if seconds is None:
            raise ClientError(
                "completion_window must be like '24h' (N followed by s, m or h), "
                f"at most {self.cfg.batches.max_window_s:.0f}s.",
                param="completion_window",
            )
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise ClientError("metadata must be an object.", param="metadata")
        fid = body.get("input_file_id")
        f = await self.files.get(ident.tenant, fid) if isinstance(fid, str) else None
        if f is None:
            raise NotFound(f"No such file: {fid}", param="input_file_id")
        if f.purpose != "batch":
            raise ClientError(
                f"File {fid} has purpose '{f.purpose}'; a batch needs purpose 'batch'.",
                param="input_file_id",
            )
        now = time.time()
        b = BatchRecord(
            id=new_id("batch"),
            tenant=ident.tenant,
            identity=identity_json(ident),
            endpoint=endpoint,
            input_file_id=f.id,
            completion_window=window,  # type: ignore[arg-type]
            status="validating",
            created_at=now,
            expires_at=now + seconds,
            metadata=json.dumps(metadata) if metadata else None,
        )
        await self.store.create(b)
        if self.on_change is not None:
            self.on_change()
        return b.openai()

    async def _list(self, x: Exchange, ident: Identity) -> dict[str, Any]:
        q = _query(x.query)
        limit = _limit(q, 100)
        rows = await self.store.page(_scope(ident), limit=limit + 1, after=q.get("after"))
        return _page([await self.view(b) for b in rows[:limit]], len(rows) > limit)

    async def _batch(self, ident: Identity, batch_id: str) -> BatchRecord:
        b = await self.store.get(batch_id, _scope(ident))
        if b is None:
            raise NotFound(f"No such batch: {batch_id}", param="batch_id")
        return b

    async def view(self, b: BatchRecord) -> dict[str, Any]:
        """The batch object, with live request counts while it runs."""
        out = b.openai()
        if b.status in ("in_progress", "cancelling", "finalizing"):
            c = await self.store.counts(b.id, time.time())
            out["request_counts"] = {"total": c.total, "completed": c.completed, "failed": c.failed}
        return out


def identity_json(ident: Identity) -> str:
    return json.dumps(
        {
            "key_id": ident.key_id,
            "tenant": ident.tenant,
            "role": ident.role,
            "tier": ident.tier,
            "models": list(ident.models),
            "priority": ident.priority,
        }
    )


def identity_of(raw: str) -> Identity:
    d = json.loads(raw)
    return Identity(
        d["key_id"], d["tenant"], d["role"], d["tier"], tuple(d["models"]), d["priority"]
    )


def upload_limit(cfg: GatewayConfig) -> int:
    """The body limit of ``POST /v1/files``: the largest file plus room for the form."""
    return cfg.batches.max_file_bytes + 64 * 1024


def _scope(ident: Identity) -> str | None:
    return None if ident.role == "admin" else ident.tenant


def _query(query: str) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(query))


def _limit(q: dict[str, str], most: int) -> int:
    try:
        n = int(q.get("limit", "20"))
    except ValueError:
        raise ClientError("limit must be an integer.", param="limit") from None
    if not 1 <= n <= most:
        raise ClientError(f"limit must be between 1 and {most}.", param="limit")
    return n


def _page(data: list[Any], more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


def _reply(x: Exchange, rec: Record, status: int, data: Any) -> None:
    rec.status = status
    x.reply(status, orjson.dumps(data))
