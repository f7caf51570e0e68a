"""The OpenAPI document served at ``/openapi.json``: hand-written (small and exact),
except the admin API's schemas, which come from its pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from gantry.config import EngineSpec, Split, TierLimits
from gantry.gateway import batch_policy
from gantry.gateway.adapters import LoadAdapter, UnloadAdapter
from gantry.gateway.admin_schema import CreateKey, ListKeysQuery, NoBody, UsageQuery

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


_ADMIN_ERRORS = {str(code): _ERROR for code in (400, 401, 403, 404, 405, 413)}
_KEY_ID = {
    "name": "key_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{12}$"},
}


def _admin_op(
    op_id: str,
    summary: str,
    status: int = 200,
    body: str | None = None,
    query: type[BaseModel] | None = None,
    required: bool = True,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {
            str(status): {
                "description": "OK",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            **_ADMIN_ERRORS,
        },
    }
    if body is not None:
        ref = {"$ref": f"#/components/schemas/{body}"}
        op["requestBody"] = {"required": required, "content": {"application/json": {"schema": ref}}}
    if query is not None:
        # Optional query parameters: absent is the default, a query string has no null.
        props = _oas30(query.model_json_schema())["properties"]
        op["parameters"] = [
            {"name": n, "in": "query", "schema": _not_null(schema)} for n, schema in props.items()
        ]
    return op


def _admin_paths() -> dict[str, Any]:
    def keyed(op_id: str, summary: str) -> dict[str, Any]:
        return {
            "parameters": [_KEY_ID],
            "post": _admin_op(op_id, summary, body="NoBody", required=False),
        }

    create = _admin_op("createKey", "Create a key; the answer holds it once", 201, "CreateKey")
    # A created key's id feeds revoke and rotate (clients and fuzzers can follow it).
    create["responses"]["201"]["links"] = {
        name: {"operationId": op_id, "parameters": {"key_id": "$response.body#/id"}}
        for name, op_id in (("Revoke", "revokeKey"), ("Rotate", "rotateKey"))
    }
    return {
        "/admin/keys": {
            "get": _admin_op("listKeys", "List keys (never secrets)", query=ListKeysQuery),
            "post": create,
        },
        "/admin/keys/{key_id}/revoke": keyed("revokeKey", "Revoke a key"),
        "/admin/keys/{key_id}/rotate": keyed("rotateKey", "Replace a key: new secret, same rest"),
        "/admin/audit": {"get": _admin_op("auditLog", "The audit log (newest first)")},
        "/admin/usage": {"get": _admin_op("usage", "Usage totals with cost", query=UsageQuery)},
        **_routing_paths(),
    }


_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$"},
}


def _routing_paths() -> dict[str, Any]:
    """Live routing changes (gantry.gateway.admin_routing)."""

    def named(**ops: dict[str, Any]) -> dict[str, Any]:
        return {"parameters": [_NAME], **ops}

    return {
        "/admin/routing": {"get": _admin_op("routingState", "Policies, splits, engines")},
        "/admin/status": {
            "get": _admin_op("status", "Engines, queues, splits, limit store, ledger and discovery")
        },
        "/admin/reload": {"post": _admin_op("reload", "Read the configuration file again")},
        "/admin/splits/{name}": named(
            put=_admin_op("putSplit", "Create or change a traffic split", body="Split"),
            delete=_admin_op("deleteSplit", "Remove a traffic split"),
        ),
        "/admin/aliases/{name}": named(
            put=_admin_op("putAlias", "Create or change a model alias", body="AliasTarget"),
            delete=_admin_op("deleteAlias", "Remove a model alias"),
        ),
        "/admin/tiers/{name}": named(
            put=_admin_op("putTier", "Create or change a limits tier", body="TierLimits"),
        ),
        "/admin/engines": {
            "post": _admin_op("addEngine", "Add an engine (probed first)", 201, "EngineSpec")
        },
        "/admin/engines/{name}": named(
            delete=_admin_op("removeEngine", "Drain an engine, then remove it")
        ),
        "/admin/engines/{name}/drain": named(
            post=_admin_op("drainEngine", "Stop sending new requests to an engine")
        ),
        "/admin/engines/{name}/undrain": named(
            post=_admin_op("undrainEngine", "Send requests to a drained engine again")
        ),
        "/admin/adapters": {"get": _admin_op("adapters", "Engines' models and adapter registry")},
        "/admin/adapters/load": {
            "post": _admin_op("loadAdapter", "Load a LoRA adapter on engines", body="LoadAdapter")
        },
        "/admin/adapters/unload": {
            "post": _admin_op("unloadAdapter", "Unload a LoRA adapter", body="UnloadAdapter")
        },
    }


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "nullable" and (k, v) != ("default", None)}


def _components(*models: type[BaseModel]) -> dict[str, Any]:
    """Schemas of config models for components, nested models hoisted beside them."""
    out: dict[str, Any] = {}
    for m in models:
        schema = m.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            out[name] = _oas30(sub)
        out[m.__name__] = _oas30(schema)
    return out


def _oas30(node: Any) -> Any:
    """A pydantic (JSON Schema 2020-12) schema in OpenAPI 3.0's dialect: ``nullable``
    instead of a ``null`` alternative, boolean ``exclusiveMinimum``, no titles."""
    if isinstance(node, list):
        return [_oas30(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _oas30(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))}
    alts = out.get("anyOf")
    if isinstance(alts, list) and len(alts) == 2 and {"type": "null"} in alts:
        del out["anyOf"]
        out.update(next(a for a in alts if a != {"type": "null"}), nullable=True)
    low = out.get("exclusiveMinimum")
    if isinstance(low, int | float) and not isinstance(low, bool):
        out["minimum"], out["exclusiveMinimum"] = low, True
    return out


_API_ERRORS = {str(code): _ERROR for code in (400, 401, 403, 404, 413)}


def _api_op(
    summary: str, body: dict[str, Any] | None = None, ctype: str = "application/json"
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": {ctype: {"schema": {"type": "object"}}}},
            **_API_ERRORS,
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    return op


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _batch_paths() -> dict[str, Any]:
    """``/v1/files`` and ``/v1/batches`` (gantry.gateway.batch_api), as OpenAI's: only
    when batches are on, and every id scoped to the caller's tenant (others' are 404)."""
    upload = {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "purpose"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "purpose": {"type": "string", "enum": ["batch"]},
                },
            }
        }
    }
    create = {"application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}}}
    return {
        "/v1/files": {
            "get": _api_op("Files of the caller's tenant"),
            "post": _api_op("Upload a batch input file (JSONL)", upload),
        },
        "/v1/files/{file_id}": {
            "parameters": [_path_id("file_id")],
            "get": _api_op("A file's record"),
            "delete": _api_op("Delete a file"),
        },
        "/v1/files/{file_id}/content": {
            "parameters": [_path_id("file_id")],
            "get": _api_op("A file's contents", ctype="application/octet-stream"),
        },
        "/v1/batches": {
            "get": _api_op("Batches of the caller's tenant"),
            "post": _api_op("Create a batch from an uploaded file", create),
        },
        "/v1/batches/{batch_id}": {
            "parameters": [_path_id("batch_id")],
            "get": _api_op("A batch: status, counts, output and error files"),
        },
        "/v1/batches/{batch_id}/cancel": {
            "parameters": [_path_id("batch_id")],
            "post": _api_op("Cancel a validating or in-progress batch"),
        },
    }


_BATCH_REQUEST = {
    "type": "object",
    "required": ["input_file_id", "endpoint", "completion_window"],
    "properties": {
        "input_file_id": {"type": "string"},
        "endpoint": {
            "type": "string",
            "enum": list(batch_policy.ENDPOINTS),
        },
        "completion_window": {"type": "string", "pattern": batch_policy.WINDOW.pattern},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def openapi_document(version: str, *, batches: bool = False) -> dict[str, Any]:
    """The document for a gateway; ``batches``: with the batch API's paths."""
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
            "/openapi.json": _get("This document"),
            **_admin_paths(),
            **(_batch_paths() if batches else {}),
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A gantry API key (gk_...) or, when configured, a JWT.",
                }
            },
            "schemas": {
                "CreateKey": _oas30(CreateKey.model_json_schema()),
                **_components(Split, TierLimits, EngineSpec),
                "AliasTarget": {
                    "type": "object",
                    "required": ["target"],
                    "additionalProperties": False,
                    "properties": {"target": {"type": "string", "minLength": 1}},
                },
                "NoBody": _oas30(NoBody.model_json_schema()),
                "LoadAdapter": _oas30(LoadAdapter.model_json_schema()),
                "UnloadAdapter": _oas30(UnloadAdapter.model_json_schema()),
                "BatchRequest": _BATCH_REQUEST,
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
            },
        },
    }
