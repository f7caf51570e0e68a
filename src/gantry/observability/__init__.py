"""Observability: Prometheus metrics, structured logs, OpenTelemetry tracing."""

from gantry.observability.logging import request_logger, setup_logging
from gantry.observability.metrics import GatewayMetrics
from gantry.observability.tracing import Tracer

__all__ = ["GatewayMetrics", "Tracer", "request_logger", "setup_logging"]
