"""gantry's one error hierarchy. Code raises these; the API layer turns them into
OpenAI error JSON through ``GantryError.response()`` (built with
``gantry.protocol.error_body``, the only place the envelope is made)::

    GantryError                      500 server_error
    ├── ClientError                  400 invalid_request_error
    │   ├── UnsupportedMediaType     415
    │   ├── PayloadTooLarge          413
    │   ├── ModelNotFound            404 (code model_not_found)
    │   ├── NotFound                 404 (unknown route)
    │   ├── MethodNotAllowed         405
    │   ├── IdempotencyConflict      422 (same key, different body)
    │   ├── IdempotencyInProgress    409 (same key still running)
    │   ├── AuthenticationError      401
    │   ├── PermissionDenied         403 (wrong role, model not allowed)
    │   ├── HeadersTooLarge          431
    │   ├── RequestTimeout           408 (slow client)
    │   ├── URITooLong               414
    │   └── RateLimited              429 (+ Retry-After)
    ├── ServiceUnavailable           503 (+ Retry-After)
    │   ├── Draining                 the gateway is shutting down (+ Connection: close)
    │   ├── NoHealthyEngine          no healthy engine serves the model
    │   ├── NoCapacity               engines exist but none has room (queue full or timed
    │   │                            out, KV cache or engine queue saturated)
    │   └── LimitStoreUnavailable    the rate-limit store cannot be reached (fail closed)
    ├── ConfigError                  a setting that cannot work (CLI: one line, exit 2)
    │   ├── DoesNotFit               a model that does not fit the GPUs (the message advises)
    │   └── ImpossibleSlo            no request rate meets the SLO (the planner, the tuner)
    ├── LaunchError                  engines the supervisor starts do not become ready
    │   └── GpuUnavailable           no NVML, no driver or no GPU (the simulator is used)
    └── EngineError                  talking to an engine went wrong
        ├── RetryableEngineError     502/503/504: connect failure, timeout, engine 5xx/429
        │   ├── EngineTimeout        504
        │   └── FailedBeforeFirstToken  the stream broke before any token: safe to retry
        └── EngineRejected           the engine answered 4xx: its status and body pass through

Errors are turned into responses in one place, ``gantry.gateway.failures``: JSON with the
status before the response starts, an SSE error event and ``[DONE]`` after.
"""

from __future__ import annotations

from gantry.protocol import error_bytes


class GantryError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self, message: str, *, param: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after

    def body(self) -> bytes:
        return error_bytes(self.message, self.type, param=self.param, code=self.code)

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after is None:
            return []
        return [(b"retry-after", str(max(1, round(self.retry_after))).encode())]


class ClientError(GantryError):
    status = 400
    type = "invalid_request_error"


class UnsupportedMediaType(ClientError):
    status = 415


class PayloadTooLarge(ClientError):
    status = 413


class ModelNotFound(ClientError):
    status = 404
    code = "model_not_found"


class NotFound(ClientError):
    status = 404
    type = "not_found_error"


class MethodNotAllowed(ClientError):
    status = 405


class AuthenticationError(ClientError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class IdempotencyConflict(ClientError):
    """The Idempotency-Key was used before with a different request body."""

    status = 422
    code = "idempotency_key_reused"


class IdempotencyInProgress(ClientError):
    """A request with this Idempotency-Key is still running (waited too long)."""

    status = 409
    code = "idempotency_key_in_progress"


class PermissionDenied(ClientError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class HeadersTooLarge(ClientError):
    status = 431


class RequestTimeout(ClientError):
    status = 408
    type = "timeout_error"


class URITooLong(ClientError):
    status = 414


class RateLimited(ClientError):
    status = 429
    type = "rate_limit_error"


class ServiceUnavailable(GantryError):
    status = 503
    type = "service_unavailable"
    reason = "unavailable"  # the label of gantry_requests_shed_total


class Draining(ServiceUnavailable):
    reason = "draining"


class NoHealthyEngine(ServiceUnavailable):
    reason = "no_healthy_engine"


class NoCapacity(ServiceUnavailable):
    """Healthy engines exist but none can take the request now; ``reason`` says why."""

    def __init__(self, message: str, *, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)
        self.reason = reason


class LimitStoreUnavailable(ServiceUnavailable):
    reason = "limit_store_down"


class ConfigError(GantryError):
    """Invalid configuration; shown as one line at start-up."""


class DoesNotFit(ConfigError):
    """The model's weights (or one full sequence) do not fit; the message says what would."""


class ImpossibleSlo(ConfigError):
    """Even one request at a time misses the SLO; the message gives the figures."""


class LaunchError(GantryError):
    """Supervised engines could not be started or did not become ready."""


class GpuUnavailable(LaunchError):
    """NVML cannot be used here (not installed, no driver, no GPU); the message says why."""


class EngineError(GantryError):
    status = 502
    type = "upstream_error"

    def __init__(self, message: str, *, engine: str = "", **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.engine = engine


class RetryableEngineError(EngineError):
    """Safe to try on another engine (nothing reached the client yet)."""


class EngineTimeout(RetryableEngineError):
    status = 504
    type = "timeout_error"


class FailedBeforeFirstToken(RetryableEngineError):
    """The engine's stream failed before any token reached the client."""


class EngineRejected(EngineError):
    """The engine refused the request (4xx); relayed to the client as it came."""

    def __init__(self, status: int, body: bytes, *, engine: str = "") -> None:
        super().__init__(f"engine rejected the request with {status}", engine=engine)
        self.status = status
        self._body = body

    def body(self) -> bytes:
        return self._body


__all__ = [
    "AuthenticationError",
    "ClientError",
    "ConfigError",
    "DoesNotFit",
    "Draining",
    "EngineError",
    "EngineRejected",
    "EngineTimeout",
    "FailedBeforeFirstToken",
    "GantryError",
    "GpuUnavailable",
    "HeadersTooLarge",
    "IdempotencyConflict",
    "IdempotencyInProgress",
    "ImpossibleSlo",
    "LaunchError",
    "LimitStoreUnavailable",
    "MethodNotAllowed",
    "ModelNotFound",
    "NoCapacity",
    "NoHealthyEngine",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "RequestTimeout",
    "RetryableEngineError",
    "ServiceUnavailable",
    "URITooLong",
    "UnsupportedMediaType",
]
