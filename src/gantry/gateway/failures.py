"""The one place an exception becomes a response.

Before the response has started, an error is OpenAI error JSON with its status (and
``Retry-After`` where it has one). After a stream has started, it is an SSE error event
followed by ``[DONE]``, and the stream ends cleanly. A client that left gets nothing
(recorded as 499). Anything unexpected is a 500 whose body says nothing internal; the
traceback goes to the log.
"""

from __future__ import annotations

import logging

from gantry.errors import (
    Draining,
    EngineTimeout,
    GantryError,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
)
from gantry.gateway.accounting import Record
from gantry.gateway.http import BodyTimeout, BodyTooLarge, Exchange
from gantry.observability import GatewayMetrics
from gantry.protocol import ClientGone, encode_data, encode_done, error_body

log = logging.getLogger("gantry.gateway")
_INTERNAL = GantryError("The gateway had an internal error.")


def as_gantry_error(exc: BaseException, x: Exchange, rec: Record) -> GantryError | None:
    """The error tree's view of any exception; None for a client that went away."""
    if isinstance(exc, GantryError):
        return exc
    if isinstance(exc, ClientGone):
        return None
    if isinstance(exc, BodyTooLarge):
        return PayloadTooLarge("Request body is too large.")
    if isinstance(exc, BodyTimeout):
        return RequestTimeout("The request body did not arrive in time.")
    if isinstance(exc, TimeoutError):
        return EngineTimeout("The engine stopped sending (timed out).")
    log.error("unhandled error for request %s", rec.rid, exc_info=exc)
    return _INTERNAL


async def answer(
    x: Exchange, exc: BaseException, rec: Record, metrics: GatewayMetrics | None = None
) -> None:
    """Answer ``exc`` on ``x`` and record the outcome in ``rec``."""
    err = as_gantry_error(exc, x, rec)
    if err is None or x.gone:
        rec.gone = True
        return
    rec.status = err.status
    rec.error = err.message
    if isinstance(err, ServiceUnavailable) and metrics is not None:
        metrics.shed.labels(rec.model, err.reason).inc()
    if isinstance(err, Draining | RequestTimeout | PayloadTooLarge):
        x.keep_alive = False  # the client should go elsewhere / the body is not read
    if not x.started:
        x.reply(err.status, err.body(), headers=err.headers())
        return
    if x.finished:
        return
    event = encode_data(error_body(err.message, err.type, code=err.status))
    await x.write(event + encode_done())
    x.end_stream()
