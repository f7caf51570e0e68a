"""Optional OpenTelemetry spans (extra ``gantry[otel]``) and W3C trace context.

With tracing disabled, ``Tracer`` is a no-op whose spans cost a function call; the
incoming ``traceparent`` is still passed on to engines. Enabled tracing whose SDK or
exporter is not installed is a ``ConfigError`` at start-up, never a silent no-op:
``check_tracing`` lets the CLI say so before anything starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from gantry.config import TracingConfig
from gantry.errors import ConfigError

_INSTALL = "pip install 'gantry[otel]'"


def _sdk() -> Any:
    try:
        import opentelemetry.sdk.trace as sdk_trace
    except ImportError:
        raise ConfigError(f"tracing.enabled needs the OpenTelemetry SDK: {_INSTALL}") from None
    return sdk_trace


def _exporter_class(cfg: TracingConfig) -> Any:
    """The span exporter class ``cfg.exporter`` names (None for ``none``)."""
    if cfg.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter
    if cfg.exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
        except ImportError:
            raise ConfigError(
                f"tracing.exporter 'otlp' needs the OTLP exporter: {_INSTALL}"
            ) from None
        return OTLPSpanExporter
    return None


def check_tracing(cfg: TracingConfig) -> None:
    """Raise ConfigError (one line) if enabled tracing cannot export as configured."""
    if cfg.enabled:
        _sdk()
        _exporter_class(cfg)


def _exporter(cfg: TracingConfig) -> Any:
    cls = _exporter_class(cfg)
    if cls is None:
        return None
    if cfg.exporter == "otlp":  # endpoint None: OTEL_EXPORTER_OTLP_* or the default
        return cls(endpoint=cfg.otlp_endpoint)
    return cls()


class Tracer:
    def __init__(self, cfg: TracingConfig) -> None:
        self._tracer: Any = None
        self._propagate: Any = None
        if not cfg.enabled:
            return
        sdk_trace = _sdk()
        from opentelemetry import propagate, trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        provider = sdk_trace.TracerProvider(
            resource=Resource.create({"service.name": cfg.service_name}),
            sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)),
        )
        exporter = _exporter(cfg)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
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
