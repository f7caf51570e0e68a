"""The OpenAI error envelope: ``{"error": {"message", "type", "param", "code"}}``.

This is the one place the envelope is built; the gateway's error hierarchy and the
simulator's vLLM-compatible errors both call it.
"""

from __future__ import annotations

from typing import Any

import orjson


def error_body(
    message: str, type_: str, *, param: str | None = None, code: int | str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_bytes(
    message: str, type_: str, *, param: str | None = None, code: int | str | None = None
) -> bytes:
    return orjson.dumps(error_body(message, type_, param=param, code=code))


def flat_error_message(payload: Any) -> str | None:
    """Read the message out of any error shape an engine may send.

    Accepts the nested envelope (vLLM >= 0.10.1), the old flat ``{"object": "error"}``
    shape, vLLM's 401 ``{"error": "Unauthorized"}`` and FastAPI's ``{"detail": ...}``.
    """
    if not isinstance(payload, dict):
        return None
    err = payload.get("error")
    if isinstance(err, dict):
        msg = err.get("message")
        return str(msg) if msg is not None else None
    if isinstance(err, str):
        return err
    if payload.get("object") == "error" and "message" in payload:
        return str(payload["message"])
    if "detail" in payload:
        return str(payload["detail"])
    return None
