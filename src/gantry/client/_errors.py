"""The client's errors, one branch of ``gantry.errors``::

    GantryError
    └── ClientSDKError                  anything the client raises
        ├── RetryableError              safe to send again (the client retries these)
        │   ├── RateLimitError          429 (``retry_after`` from Retry-After)
        │   ├── UnavailableError        503 (``retry_after`` from Retry-After)
        │   └── ConnectionLost          refused, reset or timed out before the first byte
        ├── APIError                    the server answered with an error (``status``)
        │   ├── BadRequestError         400, 413, 415, 422
        │   ├── AuthenticationError     401
        │   ├── PermissionDeniedError   403
        │   ├── NotFoundError           404
        │   ├── ConflictError           409 (same Idempotency-Key still running)
        │   └── ServerError             other 5xx
        ├── StreamError                 a stream broke or reported an error after its first
        │                               byte (not retried: part of the answer was seen)
        ├── ContextOverflowError        the prompt cannot fit (checked before sending)
        ├── UnsupportedError            the engine does not serve this (e.g. embeddings)
        ├── ModeUnavailableError        the asked-for mode cannot run here (no vLLM, no GPU)
        └── GpuMemoryError              no GPU to ask, or not enough free memory in time
                                        (defined with the GPU helpers, ``_gpu.py``)

``RateLimitError`` and ``UnavailableError`` are also ``APIError``-like (``status``), but
sit under ``RetryableError`` so that one ``except RetryableError`` catches all the
errors worth retrying. Foreign exceptions (httpx, vLLM) are translated at the boundary.
"""

from __future__ import annotations

from gantry.errors import GantryError


class ClientSDKError(GantryError):
    """Anything the client raises."""

    retryable = False
    status: int = 0

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, param=param, retry_after=retry_after)
        if status is not None:
            self.status = status

    @property
    def kind(self) -> str:
        """The short name statistics count errors under."""
        return type(self).__name__


class RetryableError(ClientSDKError):
    retryable = True


class RateLimitError(RetryableError):
    status = 429


class UnavailableError(RetryableError):
    status = 503


class ConnectionLost(RetryableError):
    """No answer started: the connection was refused, reset or timed out before any byte
    of the response arrived."""


class APIError(ClientSDKError):
    pass


class BadRequestError(APIError):
    status = 400


class AuthenticationError(APIError):
    status = 401


class PermissionDeniedError(APIError):
    status = 403


class NotFoundError(APIError):
    status = 404


class ConflictError(APIError):
    status = 409


class ServerError(APIError):
    status = 500


class StreamError(ClientSDKError):
    pass


class ContextOverflowError(ClientSDKError):
    """The prompt and the completion cannot fit in the model's context."""

    def __init__(self, prompt_tokens: int, max_tokens: int, context_length: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length
        self.excess_tokens = prompt_tokens + max_tokens - context_length
        super().__init__(
            f"the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}: "
            f"{prompt_tokens + max_tokens} > the context length {context_length} "
            f"(over by {self.excess_tokens})",
            param="messages",
        )


class UnsupportedError(ClientSDKError):
    pass


class ModeUnavailableError(ClientSDKError):
    pass


def error_for_status(status: int, message: str, retry_after: float | None) -> ClientSDKError:
    """The error for an HTTP error answer (the one place statuses are mapped)."""
    if status == 429:
        return RateLimitError(message, status=status, retry_after=retry_after)
    if status == 503:
        return UnavailableError(message, status=status, retry_after=retry_after)
    cls: type[APIError] = {
        401: AuthenticationError,
        403: PermissionDeniedError,
        404: NotFoundError,
        409: ConflictError,
    }.get(status, ServerError if status >= 500 else BadRequestError)
    return cls(message, status=status, retry_after=retry_after)


__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ClientSDKError",
    "ConflictError",
    "ConnectionLost",
    "ContextOverflowError",
    "ModeUnavailableError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryableError",
    "ServerError",
    "StreamError",
    "UnavailableError",
    "UnsupportedError",
    "error_for_status",
]
