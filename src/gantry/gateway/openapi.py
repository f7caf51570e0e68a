"""The OpenAPI document served at ``/openapi.json`` (hand-written: small and exact)."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "OpenAI-shaped error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _post(summary: str, schema: str, stream: bool = True) -> dict[str, Any]:
    ok: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if stream:
        ok["text/event-stream"] = {"schema": {"type": "string"}}
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
                },
            },
            "responses": {
                "200": {"description": "OK", "content": ok},
                "400": _ERROR,
                "404": _ERROR,
                "413": _ERROR,
                "415": _ERROR,
                "429": _ERROR,
                "503": _ERROR,
            },
        }
    }


def _get(summary: str, ctype: str = "application/json") -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "responses": {
                "200": {"description": "OK", "content": {ctype: {"schema": {"type": "object"}}}},
                "503": {"description": "Not ready"},
            },
        }
    }


def openapi_document(version: str) -> dict[str, Any]:
    message = {
        "type": "object",
        "required": ["role"],
        "properties": {"role": {"type": "string"}, "content": {}},
    }
    common = {
        "model": {"type": "string"},
        "stream": {"type": "boolean"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "stream_options": {"type": "object"},
        "user": {"type": "string"},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "gantry gateway",
            "version": version,
            "description": "OpenAI-compatible gateway in front of vLLM engines. Fields "
            "not listed here (vLLM's extras) pass through untouched.",
        },
        "paths": {
            "/v1/chat/completions": _post("Chat completion", "ChatRequest"),
            "/v1/completions": _post("Text completion", "CompletionRequest"),
            "/v1/embeddings": _post(
                "Embeddings (engines that serve them)", "EmbeddingRequest", stream=False
            ),
            "/tokenize": _post("Tokenize with the model's engine", "TokenizeRequest", False),
            "/detokenize": _post("Detokenize with the model's engine", "DetokenizeRequest", False),
            "/v1/models": _get("Models served (union over engines, plus aliases)"),
            "/health": _get("Liveness"),
            "/readyz": _get("Readiness: every model has a healthy engine"),
            "/metrics": _get("Prometheus metrics", "text/plain"),
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["message", "type"],
                            "properties": {
                                "message": {"type": "string"},
                                "type": {"type": "string"},
                                "param": {"type": "string", "nullable": True},
                                "code": {"nullable": True},
                            },
                        }
                    },
                },
                "ChatRequest": {
                    "type": "object",
                    "required": ["model", "messages"],
                    "properties": {
                        **common,
                        "messages": {"type": "array", "minItems": 1, "items": message},
                    },
                },
                "CompletionRequest": {
                    "type": "object",
                    "required": ["model", "prompt"],
                    "properties": {
                        **common,
                        "prompt": {"oneOf": [{"type": "string"}, {"type": "array"}]},
                    },
                },
                "EmbeddingRequest": {
                    "type": "object",
                    "required": ["model", "input"],
                    "properties": {"model": {"type": "string"}, "input": {}},
                },
                "TokenizeRequest": {
                    "type": "object",
                    "properties": {"model": {"type": "string"}, "prompt": {"type": "string"}},
                },
                "DetokenizeRequest": {
                    "type": "object",
                    "required": ["tokens"],
                    "properties": {
                        "model": {"type": "string"},
                        "tokens": {"type": "array", "items": {"type": "integer"}},
                    },
                },
            }
        },
    }
