"""Optional OpenTelemetry spans (extra ``gantry[otel]``) and W3C trace context.

Without the SDK, or with tracing disabled, ``Tracer`` is a no-op whose spans cost a
function call; the incoming ``traceparent`` is still passed on to engines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from gantry.config import TracingConfig


class Tracer:
    def __init__(self, cfg: TracingConfig) -> None:
        self._tracer: Any = None
        self._propagate: Any = None
        if not cfg.enabled:
            return
        try:
            from opentelemetry import propagate, trace
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import (
                BatchSpanProcessor,
                ConsoleSpanExporter,
            )
        except ImportError:
            return
        provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}))
        if cfg.exporter == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif cfg.exporter == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            except ImportError:
                pass
        trace.set_tracer_provider(provider)
        self._tracer = trace.get_tracer("gantry")
        self._propagate = propagate

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextlib.contextmanager
    def span(
        self, name: str, parent_headers: Mapping[str, str] | None = None, **attrs: Any
    ) -> Iterator[Any]:
        if self._tracer is None:
            yield None
            return
        ctx = self._propagate.extract(parent_headers) if parent_headers else None
        with self._tracer.start_as_current_span(name, context=ctx, attributes=attrs) as s:
            yield s

    def inject(self, headers: dict[str, str]) -> None:
        """Write the current span's ``traceparent`` into outgoing headers."""
        if self._propagate is not None:
            self._propagate.inject(headers)
