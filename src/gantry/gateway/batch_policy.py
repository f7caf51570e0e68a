"""Batch jobs, the pure part: input validation, the output line format, how many lines
may run now, and what a batch needs next. No I/O; the runner applies the decisions."""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterator
from typing import Any

import orjson

from gantry.protocol import ENDPOINT_CHAT, ENDPOINT_COMPLETIONS, ENDPOINT_EMBEDDINGS
from gantry.state.batches import Counts, LineRow

ENDPOINTS = (ENDPOINT_CHAT, ENDPOINT_COMPLETIONS, ENDPOINT_EMBEDDINGS)
WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smh])$")
_UNIT = {"s": 1, "m": 60, "h": 3600}
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


def window_seconds(window: str, max_s: float) -> float | None:
    """``24h`` (OpenAI's only value), or any ``N[smh]`` up to ``max_s``; None if invalid."""
    m = WINDOW.match(window)
    if m is None:
        return None
    seconds = int(m.group(1)) * _UNIT[m.group(2)]
    return float(seconds) if seconds <= max_s else None


def lines_of(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(offset, length, text) of each non-blank line."""
    offset = 0
    for raw in data.splitlines(keepends=True):
        text = raw.strip()
        if text:
            yield offset, len(raw), text
        offset += len(raw)


def validate(data: bytes, endpoint: str, max_lines: int, max_line_bytes: int) -> list[LineRow]:
    """One row per input line. A malformed line becomes a failed row with its error
    line (the rest of the batch runs); ``ValueError`` for a file that cannot be a batch
    at all (empty, too many lines)."""
    rows: list[LineRow] = []
    seen: set[str] = set()
    for n, (offset, length, text) in enumerate(lines_of(data)):
        if n >= max_lines:
            raise ValueError(f"the input file has more than {max_lines} requests")
        custom_id, problem = check_line(text, endpoint, max_line_bytes)
        if custom_id is None:
            custom_id = f"line-{n + 1}"
        elif custom_id in seen:
            problem = f"custom_id {custom_id!r} is used by an earlier line"
            custom_id = f"{custom_id}#line-{n + 1}"
        seen.add(custom_id)
        result = error_line(custom_id, "invalid_request", f"line {n + 1}: {problem}")
        rows.append(LineRow(n, custom_id, offset, length, result if problem else None))
    if not rows:
        raise ValueError("the input file holds no requests")
    return rows


def check_line(text: bytes, endpoint: str, max_bytes: int) -> tuple[str | None, str | None]:
    """(custom_id, problem): problem is None for a line that can run."""
    if len(text) > max_bytes:
        return None, f"longer than {max_bytes} bytes"
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc})"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid or len(cid) > 512:
        return None, "custom_id must be a string of 1-512 characters"
    if obj.get("method") != "POST":
        return cid, "method must be POST"
    if obj.get("url") != endpoint:
        return cid, f"url must be the batch's endpoint {endpoint}"
    body = obj.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return cid, "body must be an object with a model"
    if body.get("stream"):
        return cid, "streaming is not supported in a batch"
    return cid, None


def request_body(text: bytes) -> bytes:
    """The ``body`` of a validated line, as JSON bytes."""
    return orjson.dumps(orjson.loads(text)["body"])


def _line_id() -> str:
    return f"batch_req_{os.urandom(12).hex()}"


def output_line(custom_id: str, status: int, request_id: str, body: bytes) -> tuple[bool, str]:
    """OpenAI's line for a request that got an answer: (ok, line). Non-2xx answers go to
    the error file, with the error body as the engine or gateway gave it."""
    try:
        parsed: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = {"error": {"message": body.decode("utf-8", "replace"), "type": "server_error"}}
    line = {
        "id": _line_id(),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": parsed},
        "error": None,
    }
    return 200 <= status < 300, orjson.dumps(line).decode()


def error_line(custom_id: str, code: str, message: str) -> str:
    """OpenAI's line for a request that never got an answer (malformed, expired)."""
    line = {
        "id": _line_id(),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }
    return orjson.dumps(line).decode()


def retry_later(status: int) -> bool:
    """Statuses that mean "not now" (limits, capacity): the line waits and runs later,
    within the completion window, instead of failing."""
    return status in (429, 503)


def room(
    *, concurrency: int, share: float, capacity: int, running: int, interactive_waiting: int
) -> int:
    """How many more lines this replica may start now.

    Batch lines use at most ``share`` of the engines' in-flight capacity (``capacity``,
    0 when unlimited), at most ``concurrency`` at a time, and none while interactive
    requests wait in the admission queue: they yield to interactive traffic."""
    if interactive_waiting > 0:
        return 0
    limit = concurrency if capacity <= 0 else min(concurrency, max(1, int(share * capacity)))
    return max(0, limit - running)


class Step(enum.Enum):
    NOTHING = "nothing"
    VALIDATE = "validate"
    EXPIRE = "expire"  # fail the lines not run with batch_expired, then finalize
    FINALIZE = "finalize"


def next_step(status: str, counts: Counts | None, now: float, expires_at: float) -> Step:
    """What an active batch needs next (``counts`` of its lines, None if not read)."""
    if status == "validating":
        return Step.VALIDATE
    if status == "finalizing":
        return Step.FINALIZE
    if counts is None:
        return Step.NOTHING
    if status == "in_progress":
        if counts.open == 0:
            return Step.FINALIZE
        if now >= expires_at:
            return Step.EXPIRE if counts.open > counts.running else Step.NOTHING
    if status == "cancelling" and counts.running == 0:
        return Step.FINALIZE
    return Step.NOTHING


def final_status(status: str, expired: bool) -> str:
    if status == "cancelling":
        return "cancelled"
    return "expired" if expired else "completed"
