"""Structured JSON logs (structlog for process logs; ``RequestLog`` for the one line per
request, which never holds prompt or completion text)."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

import orjson
import structlog


def _dumps(obj: Any, **_kw: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def setup_logging(level: str = "info", *, json_format: bool = True) -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json_format
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,  # tracebacks as text in the JSON line
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # stdlib loggers (ours and libraries') go through the same renderer.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def request_logger() -> structlog.typing.FilteringBoundLogger:
    # bind() resolves the lazy proxy once, so each request skips the proxy's lookup.
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("gantry.request").bind()
    return logger


class RequestLog:
    """One JSON line per request, in the same shape as the other log lines.

    Lines are written every 50 ms (under load that is hundreds of lines a syscall, where
    one write a line cost ~4% of the gateway's CPU); the buffer is bounded and flushed
    at shutdown.
    """

    __slots__ = ("_buf", "_loop", "_max", "_out", "_scheduled", "_sec", "_stamp")

    def __init__(self, out: Any = None, max_buffer: int = 1 << 20) -> None:
        self._out = out
        self._buf: list[bytes] = []
        self._max = max_buffer
        self._scheduled = False
        self._sec = -1
        self._stamp = ""
        self._loop: Any = None

    def _timestamp(self) -> str:
        now = time.time()
        sec = int(now)
        if sec != self._sec:  # formatting the date part once a second
            self._sec = sec
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._stamp}.{int((now - sec) * 1e6):06d}Z"

    def write(self, fields: dict[str, Any]) -> None:
        fields["event"] = "request"
        fields["level"] = "info"
        fields["timestamp"] = self._timestamp()
        self._buf.append(orjson.dumps(fields, default=str) + b"\n")
        if len(self._buf) > 4096:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_later(0.05, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._buf:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        out = self._out or sys.stderr
        try:
            sink: Any = getattr(out, "buffer", out)
            sink.write(data)
            out.flush()
        except (OSError, ValueError):
            pass  # a closed or broken log stream must not fail requests
