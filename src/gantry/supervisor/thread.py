"""The supervisor on a thread of its own, for synchronous callers (the gateway's parent
process, which starts engines before its workers): a thin wrapper over
``EngineSupervisor``, not a second implementation.

    launched = SupervisorThread(spec)
    specs = launched.start(ready_timeout_s=900)   # blocks until ready; LaunchError if not
    ...
    launched.stop()                               # engines stopped, thread joined
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from gantry.config import EngineSpec
from gantry.errors import LaunchError
from gantry.supervisor.config import LaunchSpec
from gantry.supervisor.supervisor import EngineSupervisor, prepare


class SupervisorThread:
    def __init__(self, spec: LaunchSpec, *, status_port: int | None = None, **prepare_kw: Any):
        self.spec = spec
        self._status_port = status_port
        self._prepare_kw = prepare_kw
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self.supervisor: EngineSupervisor | None = None

    def start(self, ready_timeout_s: float = 1800.0) -> tuple[EngineSpec, ...]:
        """Prepare (one-line errors raise here), start, wait until every engine is ready."""
        plan, detection = prepare(self.spec, **self._prepare_kw)
        started: concurrent.futures.Future[EngineSupervisor] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._main, args=(plan, detection, started), name="gantry-supervisor"
        )
        self._thread.start()
        sup = started.result()
        assert self._loop is not None
        ready = asyncio.run_coroutine_threadsafe(sup.wait_ready(ready_timeout_s), self._loop)
        try:
            return tuple(ready.result())
        except LaunchError:
            self.stop()
            raise

    def _main(self, plan: Any, detection: Any, started: concurrent.futures.Future[Any]) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            sup = EngineSupervisor(
                plan, self.spec, detection=detection, status_port=self._status_port
            )
            self.supervisor = sup
            try:
                async with sup:
                    started.set_result(sup)
                    await self._stop.wait()
            except BaseException as exc:
                if not started.done():
                    started.set_exception(exc)
                raise

        asyncio.run(run())

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join()
            self._thread = None


__all__ = ["SupervisorThread"]
