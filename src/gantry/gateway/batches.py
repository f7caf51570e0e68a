"""Batch jobs as one service of the gateway: the SQL stores, the content storage, the
``/v1/files`` and ``/v1/batches`` API and the runner, opened and closed together."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from gantry.config import GatewayConfig
from gantry.gateway.auth import Authenticator, Identity
from gantry.gateway.batch_api import BatchAPI, identity_of
from gantry.gateway.batch_runner import BatchRunner, Execute
from gantry.state.batches import BatchStore
from gantry.state.files import DirectoryStorage, FileStore
from gantry.state.sql import make_engine, migrate


class BatchService:
    def __init__(
        self,
        cfg: GatewayConfig,
        sql: AsyncEngine | None,
        auth: Authenticator,
        execute: Execute,
        *,
        capacity: Callable[[], int],
        interactive_waiting: Callable[[], int],
    ) -> None:
        url = cfg.batches.database_url or cfg.security.database_url
        shared = sql is not None and url == cfg.security.database_url
        self._own_engine = not shared
        self.sql = sql if shared and sql is not None else make_engine(url)
        self.files = FileStore(self.sql, DirectoryStorage(cfg.batches.storage_dir))
        self.store = BatchStore(self.sql)
        self.api = BatchAPI(cfg, self.files, self.store)
        self.auth = auth
        self.runner = BatchRunner(
            cfg.batches,
            self.store,
            self.files,
            execute,
            resolve=self._resolve,
            capacity=capacity,
            interactive_waiting=interactive_waiting,
        )
        self.api.on_change = self.runner.poke

    def _resolve(self, identity: str) -> Identity | None:
        """The identity a batch's lines run as: the creating key's, while it is active
        (a revoked or expired key stops its batches' remaining lines)."""
        ident = identity_of(identity)
        if ident.key_id == "-" or not self.auth.required:
            return ident
        return self.auth.active_identity(ident.key_id)

    async def start(self) -> None:
        await migrate(self.sql)
        await self.runner.start()

    async def aclose(self, grace_s: float = 0.0) -> None:
        await self.runner.aclose(grace_s)
        if self._own_engine:
            await self.sql.dispose()
