"""The one route table: every path the gateway serves, who may call it, and how.

A path that is not in the table answers 404 before authentication; there is no
default route, so a new endpoint cannot be served without being given its roles here.
``label`` is the route's name in metrics and logs (bounded: ids in paths are not
labels).
"""

from __future__ import annotations

from dataclasses import dataclass

from gantry.config import GatewayConfig
from gantry.gateway.auth import ADMIN, ANY_ROLE, API, METRICS, PUBLIC
from gantry.protocol import ENDPOINT_CHAT, ENDPOINT_COMPLETIONS, ENDPOINT_EMBEDDINGS


@dataclass(frozen=True, slots=True)
class Route:
    label: str
    roles: frozenset[str]
    methods: frozenset[str]
    handler: str  # the name of the endpoint that answers it
    generation: bool = False  # relayed to engines


def _r(label: str, roles: frozenset[str], methods: str, handler: str) -> Route:
    return Route(label, roles, frozenset(methods.split()), handler, handler == "generate")


ROUTES: dict[str, Route] = {
    "/health": _r("/health", PUBLIC, "GET", "health"),
    "/readyz": _r("/readyz", ANY_ROLE, "GET", "readyz"),  # PUBLIC with security.readyz_public
    "/metrics": _r("/metrics", METRICS, "GET", "metrics"),  # PUBLIC with metrics_public
    "/openapi.json": _r("/openapi.json", API, "GET", "openapi"),
    "/v1/models": _r("/v1/models", API, "GET", "models"),
    ENDPOINT_CHAT: _r(ENDPOINT_CHAT, API, "POST", "generate"),
    ENDPOINT_COMPLETIONS: _r(ENDPOINT_COMPLETIONS, API, "POST", "generate"),
    ENDPOINT_EMBEDDINGS: _r(ENDPOINT_EMBEDDINGS, API, "POST", "generate"),
    "/tokenize": _r("/tokenize", API, "POST", "generate"),
    "/detokenize": _r("/detokenize", API, "POST", "generate"),
    "/admin/keys": _r("/admin/keys", ADMIN, "GET POST", "admin"),
    "/admin/audit": _r("/admin/audit", ADMIN, "GET", "admin"),
    "/admin/usage": _r("/admin/usage", ADMIN, "GET", "admin"),
    "/admin/routing": _r("/admin/routing", ADMIN, "GET", "admin"),
    "/admin/reload": _r("/admin/reload", ADMIN, "POST", "admin"),
    "/admin/engines": _r("/admin/engines", ADMIN, "POST", "admin"),
    "/admin/status": _r("/admin/status", ADMIN, "GET", "admin"),
    "/admin/adapters": _r("/admin/adapters", ADMIN, "GET", "admin"),
    "/admin/adapters/load": _r("/admin/adapters/load", ADMIN, "POST", "admin"),
    "/admin/adapters/unload": _r("/admin/adapters/unload", ADMIN, "POST", "admin"),
}
# Paths with an id in them: prefix -> route.
PREFIXES: tuple[tuple[str, Route], ...] = (
    ("/admin/keys/", _r("/admin/keys/{id}/{action}", ADMIN, "POST", "admin")),
    ("/admin/splits/", _r("/admin/splits/{name}", ADMIN, "PUT DELETE", "admin")),
    ("/admin/aliases/", _r("/admin/aliases/{name}", ADMIN, "PUT DELETE", "admin")),
    ("/admin/tiers/", _r("/admin/tiers/{name}", ADMIN, "PUT", "admin")),
    ("/admin/engines/", _r("/admin/engines/{name}/{action}", ADMIN, "POST DELETE", "admin")),
)


# Batch jobs (when batches are on): exact paths and paths with an id.
BATCH_ROUTES: dict[str, Route] = {
    "/v1/files": _r("/v1/files", API, "GET POST", "files"),
    "/v1/batches": _r("/v1/batches", API, "GET POST", "batches"),
}
BATCH_PREFIXES: tuple[tuple[str, Route], ...] = (
    ("/v1/files/", _r("/v1/files/{id}", API, "GET DELETE", "files")),
    ("/v1/batches/", _r("/v1/batches/{id}", API, "GET POST", "batches")),
)


def route_table(cfg: GatewayConfig) -> dict[str, Route]:
    """The table with the configured public switches applied."""
    table = dict(ROUTES)
    if cfg.batches_on:
        table.update(BATCH_ROUTES)
    if cfg.security.readyz_public:
        table["/readyz"] = _r("/readyz", PUBLIC, "GET", "readyz")
    if cfg.security.metrics_public:
        table["/metrics"] = _r("/metrics", PUBLIC, "GET", "metrics")
    return table


def match(table: dict[str, Route], path: str) -> Route | None:
    route = table.get(path)
    if route is None:
        for prefix, r in PREFIXES:
            if path.startswith(prefix) and len(path) > len(prefix):
                return r
        if "/v1/files" in table:
            for prefix, r in BATCH_PREFIXES:
                if path.startswith(prefix) and len(path) > len(prefix):
                    return r
    return route
