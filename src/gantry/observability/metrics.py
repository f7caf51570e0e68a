"""The gateway's own Prometheus metrics (``gantry_`` prefix; ``vllm:`` is the engines').

With ``--workers N`` the process runs in prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set before any worker starts), so ``/metrics`` on any
worker reports the sum over all workers.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from gantry.routing.snapshot import PoolSnapshot

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 20)
ITL = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry(auto_describe=True)
        self._engines: set[str] = set()  # engines with gauge series
        self._multiproc = multiprocess_dir() is not None
        self.requests = Counter(
            "gantry_requests",
            "Requests answered, by model, endpoint and status.",
            ["model", "endpoint", "status"],
            registry=reg,
        )
        self.duration = Histogram(
            "gantry_request_duration_seconds",
            "Request duration, arrival to last byte.",
            ["model", "endpoint"],
            buckets=LATENCY,
            registry=reg,
        )
        self.ttft = Histogram(
            "gantry_time_to_first_token_seconds",
            "Arrival to the first token sent.",
            ["model"],
            buckets=TTFT,
            registry=reg,
        )
        self.itl = Histogram(
            "gantry_inter_token_latency_seconds",
            "Gap between streamed chunks.",
            ["model"],
            buckets=ITL,
            registry=reg,
        )
        self.tokens = Counter(
            "gantry_tokens",
            "Tokens by model and kind (prompt, completion, cached).",
            ["model", "kind"],
            registry=reg,
        )
        self.active = Gauge(
            "gantry_active_requests",
            "Requests in flight in the gateway.",
            ["model"],
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.engine_up = Gauge(
            "gantry_engine_up",
            "1 when the engine passes health checks.",
            ["engine"],
            registry=reg,
            multiprocess_mode="max",
        )
        self.engine_running = Gauge(
            "gantry_engine_requests_running",
            "Engine's running requests (scraped).",
            ["engine"],
            registry=reg,
            multiprocess_mode="max",
        )
        self.engine_waiting = Gauge(
            "gantry_engine_requests_waiting",
            "Engine's waiting requests (scraped).",
            ["engine"],
            registry=reg,
            multiprocess_mode="max",
        )
        self.engine_kv = Gauge(
            "gantry_engine_kv_cache_usage",
            "Engine's KV-cache usage, 0..1 (scraped).",
            ["engine"],
            registry=reg,
            multiprocess_mode="max",
        )
        self.routed = Counter(
            "gantry_routing_decisions",
            "Requests routed, by engine and policy.",
            ["engine", "policy"],
            registry=reg,
        )
        self.retries = Counter(
            "gantry_upstream_retries",
            "Requests retried on another engine before the first byte.",
            ["engine", "reason"],
            registry=reg,
        )
        self.upstream_errors = Counter(
            "gantry_upstream_errors",
            "Failures talking to engines.",
            ["engine", "kind"],
            registry=reg,
        )
        self.breaker_state = Gauge(
            "gantry_breaker_state",
            "Circuit breaker per engine: 0 closed, 1 half-open, 2 open.",
            ["engine"],
            registry=reg,
            multiprocess_mode="max",
        )
        self.breaker_transitions = Counter(
            "gantry_breaker_transitions",
            "Circuit breaker transitions, by new state.",
            ["engine", "state"],
            registry=reg,
        )
        self.shed = Counter(
            "gantry_requests_shed",
            "Requests refused by admission (queue full, deadline, draining).",
            ["model", "reason"],
            registry=reg,
        )
        self.queue_wait = Histogram(
            "gantry_admission_wait_seconds",
            "Time spent waiting for capacity.",
            ["model"],
            buckets=LATENCY,
            registry=reg,
        )
        self.idempotent_replays = Counter(
            "gantry_idempotent_replays",
            "Requests answered from the idempotency store.",
            ["outcome"],
            registry=reg,
        )
        self.drain_seconds = Gauge(
            "gantry_drain_duration_seconds",
            "How long the last graceful drain took.",
            registry=reg,
            multiprocess_mode="max",
        )
        self.redactions = Counter(
            "gantry_pii_redactions",
            "PII items masked in prompts before they reached an engine.",
            registry=reg,
        )
        self.disconnects = Counter(
            "gantry_client_disconnects",
            "Clients that went away before the end; the upstream request was cancelled.",
            ["model"],
            registry=reg,
        )

        self.split_requests = Counter(
            "gantry_split_requests",
            "Requests through a traffic split, by split, arm and status.",
            ["split", "arm", "status"],
            registry=reg,
        )
        self.split_duration = Histogram(
            "gantry_split_request_duration_seconds",
            "Request duration through a traffic split, by arm.",
            ["split", "arm"],
            buckets=LATENCY,
            registry=reg,
        )
        self.split_ttft = Histogram(
            "gantry_split_time_to_first_token_seconds",
            "Time to first token through a traffic split, by arm.",
            ["split", "arm"],
            buckets=TTFT,
            registry=reg,
        )
        self.shadow_requests = Counter(
            "gantry_shadow_requests",
            "Mirrored requests (answers discarded), by model, shadow target and status.",
            ["model", "target", "status"],
            registry=reg,
        )
        self.shadow_duration = Histogram(
            "gantry_shadow_request_duration_seconds",
            "Duration of mirrored requests, by model and shadow target.",
            ["model", "target"],
            buckets=LATENCY,
            registry=reg,
        )
        self.shadow_ttft = Histogram(
            "gantry_shadow_time_to_first_token_seconds",
            "Time to first token of mirrored streams, by model and shadow target.",
            ["model", "target"],
            buckets=TTFT,
            registry=reg,
        )
        self.shadow_skipped = Counter(
            "gantry_shadow_skipped",
            "Requests not mirrored because max_inflight mirrors were already running.",
            ["model"],
            registry=reg,
        )

        self.kv_events = Counter(
            "gantry_kv_events",
            "KV events from engines, by kind: stored, removed, cleared, and the troubles "
            "(gap, restart, malformed, down) after which an engine is scored by prefix; "
            "lost batches caught up through a replay socket (replayed, replay_failed).",
            ["engine", "kind"],
            registry=reg,
        )
        self.kv_degraded = Gauge(
            "gantry_kv_events_degraded",
            "1 while an engine's KV events cannot be trusted (prefix scoring instead).",
            ["engine"],
            registry=reg,
            multiprocess_mode="max",
        )
        self.index_blocks = Gauge(
            "gantry_routing_index_blocks",
            "Blocks held by a routing index (prefix: approximate; kv: from KV events).",
            ["index"],
            registry=reg,
            multiprocess_mode="max",
        )
        self.index_bytes = Gauge(
            "gantry_routing_index_bytes",
            "Estimated memory of a routing index.",
            ["index"],
            registry=reg,
            multiprocess_mode="max",
        )

        self.discovery_events = Counter(
            "gantry_discovery_events",
            "Engine discovery events, by source (kubernetes, dns) and event: update (a set "
            "seen), added, removed, error (API server or resolver failed), resync (re-list).",
            ["source", "event"],
            registry=reg,
        )
        self.discovery_up = Gauge(
            "gantry_discovery_up",
            "1 while a discovery source works; 0 while it fails (the last set is kept).",
            ["source"],
            registry=reg,
            multiprocess_mode="min",
        )
        self.discovery_engines = Gauge(
            "gantry_discovery_engines",
            "Engines in the last set a discovery source saw.",
            ["source"],
            registry=reg,
            multiprocess_mode="max",
        )

    def on_snapshot(self, snap: PoolSnapshot) -> None:
        names = {e.name for e in snap.engines}
        for gone in self._engines - names:  # an engine left the pool: so do its series
            for g in (
                self.engine_up,
                self.engine_running,
                self.engine_waiting,
                self.engine_kv,
                self.kv_degraded,
            ):
                try:
                    g.remove(gone)
                except KeyError:
                    pass
        self._engines = names
        for e in snap.engines:
            self.engine_up.labels(e.name).set(1 if e.healthy else 0)
            self.engine_running.labels(e.name).set(e.running)
            self.engine_waiting.labels(e.name).set(e.waiting)
            if e.kv_usage is not None:
                self.engine_kv.labels(e.name).set(e.kv_usage)

    def render(self) -> bytes:
        if self._multiproc:
            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            return generate_latest(reg)
        return generate_latest(self.registry)
