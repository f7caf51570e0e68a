"""One engine child process: start it, carry its output into the supervisor's log, keep
its last lines, watch them for out-of-memory signatures, and stop it gracefully.

The child runs in its own process group (vLLM starts worker processes for tensor
parallelism; stopping the group stops them too, and a Ctrl-C in the supervisor's
terminal reaches the supervisor only, which then stops the children in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from collections.abc import Mapping, Sequence

from gantry.supervisor.policy import Oom, classify_line

log = logging.getLogger("gantry.engine")
MAX_LINE = 4096  # characters kept of one output line


class EngineProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        log_lines: int = 200,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.lines: deque[str] = deque(maxlen=log_lines)  # bounded: the last N lines
        self.oom: Oom | None = None  # the last out-of-memory signature seen
        self._proc: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    async def start(self) -> None:
        log.info("[%s] starting: %s", self.name, " ".join(self.argv))
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env={**os.environ, **self.env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=1 << 20,
        )
        assert self._proc.stdout and self._proc.stderr
        self._pumps = [
            asyncio.create_task(self._pump(self._proc.stdout), name=f"{self.name}-stdout"),
            asyncio.create_task(self._pump(self._proc.stderr), name=f"{self.name}-stderr"),
        ]

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the limit: take what there is
                raw = await stream.read(1 << 20)
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()[:MAX_LINE]
            self.lines.append(line)
            oom = classify_line(line)
            if oom is not None:
                self.oom = oom
            log.info("[%s] %s", self.name, line)

    async def wait(self) -> int:
        """The exit status once the process and its output are finished."""
        assert self._proc is not None
        rc = await self._proc.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        return rc

    def _signal(self, sig: int) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def stop(self, grace_s: float) -> int | None:
        """SIGTERM the process group, wait ``grace_s``, then SIGKILL it."""
        if self._proc is None:
            return None
        if self._proc.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._proc.wait()), grace_s)
            except TimeoutError:
                log.warning("[%s] still running %.0f s after SIGTERM: SIGKILL", self.name, grace_s)
        self._kill_group()  # the parent if still running, and workers it left behind
        return await self.wait()

    def _kill_group(self) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)

    def tail(self, n: int = 20) -> list[str]:
        return list(self.lines)[-n:]

    def __repr__(self) -> str:
        return f"<EngineProcess {self.name} pid={self.pid} rc={self.returncode}>"


__all__ = ["EngineProcess"]
