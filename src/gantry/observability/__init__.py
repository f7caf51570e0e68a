"""Observability: Prometheus metrics, structured logs, OpenTelemetry tracing."""

from gantry.observability.logging import RequestLog, request_logger, setup_logging
from gantry.observability.metrics import GatewayMetrics
from gantry.observability.tracing import Tracer

__all__ = ["GatewayMetrics", "RequestLog", "Tracer", "request_logger", "setup_logging"]
