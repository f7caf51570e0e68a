"""gantry's client SDK: one API over in-process vLLM, any OpenAI-compatible HTTP server
(gantry's gateway, vLLM) and the simulator in process.

    from gantry.client import create_client

    async with create_client("http://127.0.0.1:8080", model="qwen") as client:
        answer = await client.chat([{"role": "user", "content": "Hello"}], max_tokens=32)

See ``docs/client.md``.
"""

from gantry.client._backend import Backend
from gantry.client._client import AsyncClient, ClientState
from gantry.client._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientSDKError,
    ConflictError,
    ConnectionLost,
    ContextOverflowError,
    ModeUnavailableError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RetryableError,
    ServerError,
    StreamError,
    UnavailableError,
    UnsupportedError,
)
from gantry.client._gpu import GpuMemory, GpuMemoryError, GpuMonitor
from gantry.client._retry import NO_RETRY, RetryPolicy
from gantry.client._select import Mode, ModeChoice, Probe, choose_mode, create_client
from gantry.client._stats import Percentiles, StatsSnapshot
from gantry.client._sync import Client
from gantry.client._tokens import (
    HeuristicCounter,
    HFTokenizerCounter,
    TokenCounter,
    check_fit,
    chunk_text,
)
from gantry.client._types import (
    Choice,
    Chunk,
    Completion,
    Embedding,
    Options,
    ToolCall,
    Usage,
)

__all__ = [
    "NO_RETRY",
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Backend",
    "BadRequestError",
    "Choice",
    "Chunk",
    "Client",
    "ClientSDKError",
    "ClientState",
    "Completion",
    "ConflictError",
    "ConnectionLost",
    "ContextOverflowError",
    "Embedding",
    "GpuMemory",
    "GpuMemoryError",
    "GpuMonitor",
    "HFTokenizerCounter",
    "HeuristicCounter",
    "Mode",
    "ModeChoice",
    "ModeUnavailableError",
    "NotFoundError",
    "Options",
    "Percentiles",
    "PermissionDeniedError",
    "Probe",
    "RateLimitError",
    "RetryPolicy",
    "RetryableError",
    "ServerError",
    "StatsSnapshot",
    "StreamError",
    "TokenCounter",
    "ToolCall",
    "UnavailableError",
    "UnsupportedError",
    "Usage",
    "check_fit",
    "choose_mode",
    "chunk_text",
    "create_client",
]
