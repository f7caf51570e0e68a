"""OpenAI and vLLM wire formats: SSE framing, error bodies, request inspection, vLLM's
prefix-cache block hashes.

No I/O and no imports from the rest of gantry: the simulator, the gateway and the
benchmark all build on this package.
"""

from gantry.protocol._asgi import (
    JSON,
    SSE,
    TEXT,
    ASGIApp,
    BodyTooLarge,
    ClientGone,
    Message,
    Receive,
    Scope,
    Send,
    end_stream,
    header,
    read_body,
    respond,
    start_stream,
    stream_chunk,
)
from gantry.protocol._blockhash import (
    NONE_HASH,
    BlockHasher,
    block_hashes,
    event_hash,
    hash_block,
    salt_keys,
)
from gantry.protocol._errors import error_body, error_bytes, flat_error_message
from gantry.protocol._request import (
    ENDPOINT_CHAT,
    ENDPOINT_COMPLETIONS,
    ENDPOINT_EMBEDDINGS,
    RequestInfo,
    RequestShapeError,
    inspect_request,
)
from gantry.protocol._sse import (
    DONE,
    SSEDecoder,
    encode_comment,
    encode_data,
    encode_done,
    event_data,
)
from gantry.protocol._usage import Usage, usage_of, usage_of_body

__all__ = [
    "DONE",
    "ENDPOINT_CHAT",
    "ENDPOINT_COMPLETIONS",
    "ENDPOINT_EMBEDDINGS",
    "JSON",
    "NONE_HASH",
    "SSE",
    "TEXT",
    "ASGIApp",
    "BlockHasher",
    "BodyTooLarge",
    "ClientGone",
    "Message",
    "Receive",
    "RequestInfo",
    "RequestShapeError",
    "SSEDecoder",
    "Scope",
    "Send",
    "Usage",
    "block_hashes",
    "encode_comment",
    "encode_data",
    "encode_done",
    "end_stream",
    "error_body",
    "error_bytes",
    "event_data",
    "event_hash",
    "flat_error_message",
    "hash_block",
    "header",
    "inspect_request",
    "read_body",
    "respond",
    "salt_keys",
    "start_stream",
    "stream_chunk",
    "usage_of",
    "usage_of_body",
]
