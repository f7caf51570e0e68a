"""Accounting: every request ends in exactly one metric sample and one log line.

A ``Record`` travels with each request and collects what happened (model, engine,
status, tokens, first-token time, error); ``Accounting.finish()`` turns it into
``gantry_requests_total`` and the latency histograms, the JSON request log line, and,
for requests that reached an engine, a usage-ledger row. Label values are bounded:
``model`` is a served model or alias (``-`` before one is known), ``endpoint`` a route
of the table (``other`` for unknown paths).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gantry.observability import GatewayMetrics, RequestLog
from gantry.protocol import Usage
from gantry.state.ledger import UsageLedger, UsageRecord

_NO_USAGE = Usage()
_PROBES = frozenset({"/health", "/readyz", "/metrics"})


class Record:
    """What happened to one request (not frozen: filled in as it goes)."""

    __slots__ = (
        "admitted",
        "arm",
        "endpoint",
        "engine",
        "error",
        "first_token_at",
        "gone",
        "key_id",
        "model",
        "rid",
        "split",
        "status",
        "stream",
        "t0",
        "tenant",
        "usage",
    )

    def __init__(self, rid: str, endpoint: str, t0: float) -> None:
        self.rid = rid
        self.endpoint = endpoint
        self.t0 = t0
        self.model = "-"
        self.engine = "-"
        self.status = 0
        self.error: str | None = None
        self.first_token_at: float | None = None
        self.usage: Usage | None = None
        self.gone = False  # the client left before the end
        self.admitted = False  # reached the engines: a ledger row
        self.stream = False
        self.key_id = "-"
        self.tenant = "-"
        self.split: str | None = None  # a traffic split and its arm
        self.arm: str | None = None

    @property
    def tokens(self) -> int:
        u = self.usage
        return u.prompt_tokens + u.completion_tokens if u is not None else 0

    def __repr__(self) -> str:
        return f"<Record {self.rid} {self.endpoint} {self.model} status={self.status}>"


class _Children:
    """Metric children bound to one (model, endpoint): labels() costs ~1.5 us a call."""

    __slots__ = (
        "_by_status",
        "_endpoint",
        "_m",
        "_model",
        "active",
        "cached",
        "completion",
        "duration",
        "prompt",
        "ttft",
    )

    def __init__(self, m: GatewayMetrics, model: str, endpoint: str) -> None:
        self._m, self._model, self._endpoint = m, model, endpoint
        self._by_status: dict[int, Any] = {}
        self.duration = m.duration.labels(model, endpoint)
        self.ttft = m.ttft.labels(model)
        self.prompt = m.tokens.labels(model, "prompt")
        self.completion = m.tokens.labels(model, "completion")
        self.cached = m.tokens.labels(model, "cached")
        self.active = m.active.labels(model)

    def count(self, status: int) -> Any:
        c = self._by_status.get(status)
        if c is None:
            c = self._by_status[status] = self._m.requests.labels(
                self._model, self._endpoint, str(status)
            )
        return c


class Accounting:
    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        request_log: RequestLog | None,
        log_probes: bool = False,
        ledger: UsageLedger | None = None,
    ) -> None:
        self.metrics = metrics
        self.log = request_log
        self.log_probes = log_probes
        self.ledger = ledger
        self._children: dict[tuple[str, str], _Children] = {}
        self._itl: dict[str, Callable[[float], None]] = {}

    def children(self, model: str, endpoint: str) -> _Children:
        key = (model, endpoint)
        ch = self._children.get(key)
        if ch is None:
            if len(self._children) >= 1024:  # bounded: models x endpoints seen
                self._children.clear()
            ch = self._children[key] = _Children(self.metrics, model, endpoint)
        return ch

    def itl(self, model: str) -> Callable[[float], None]:
        """The observe function of the inter-token-latency histogram for ``model``."""
        fn = self._itl.get(model)
        if fn is None:
            if len(self._itl) >= 1024:
                self._itl.clear()
            fn = self._itl[model] = self.metrics.itl.labels(model).observe
        return fn

    def finish(self, rec: Record) -> None:
        now = time.perf_counter()
        dur = now - rec.t0
        status = 499 if rec.gone else rec.status
        m = self.children(rec.model, rec.endpoint)
        m.count(status).inc()
        m.duration.observe(dur)
        u = rec.usage or _NO_USAGE
        if rec.first_token_at is not None:
            m.ttft.observe(rec.first_token_at - rec.t0)
        if u.prompt_tokens:
            m.prompt.inc(u.prompt_tokens)
        if u.completion_tokens:
            m.completion.inc(u.completion_tokens)
        if u.cached_tokens:
            m.cached.inc(u.cached_tokens)
        if rec.gone:
            self.metrics.disconnects.labels(rec.model).inc()
        if rec.split is not None:
            self._split(rec, status, dur)
        latency_ms = round(dur * 1000, 2)
        if self.ledger is not None and rec.admitted:
            self.ledger.record(
                UsageRecord(
                    time.time(),
                    rec.rid,
                    rec.key_id,
                    rec.tenant,
                    rec.model,
                    rec.engine,
                    u.prompt_tokens,
                    u.completion_tokens,
                    u.cached_tokens,
                    latency_ms,
                    status,
                )
            )
        if self.log is None or (not self.log_probes and rec.endpoint in _PROBES and status < 400):
            return
        fields = {
            "request_id": rec.rid,
            "endpoint": rec.endpoint,
            "model": rec.model,
            "engine": rec.engine,
            "key_id": rec.key_id,
            "status": status,
            "latency_ms": latency_ms,
            "ttft_ms": round((rec.first_token_at - rec.t0) * 1000, 2)
            if rec.first_token_at is not None
            else None,
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "cached_tokens": u.cached_tokens,
            "error": rec.error,
        }
        if rec.split is not None:
            fields["split"], fields["arm"] = rec.split, rec.arm
        self.log.write(fields)

    def _split(self, rec: Record, status: int, dur: float) -> None:
        m = self.metrics
        arm = rec.arm or "-"
        m.split_requests.labels(rec.split, arm, str(status)).inc()
        m.split_duration.labels(rec.split, arm).observe(dur)
        if rec.first_token_at is not None:
            m.split_ttft.labels(rec.split, arm).observe(rec.first_token_at - rec.t0)
