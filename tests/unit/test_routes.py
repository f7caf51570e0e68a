"""The route table is the only way in: every path served has its roles, none defaults."""

from __future__ import annotations

import pytest

from gantry.config import load_config
from gantry.errors import AuthenticationError, PermissionDenied
from gantry.gateway.auth import ADMIN, ANONYMOUS, PUBLIC, Authenticator
from gantry.gateway.openapi import openapi_document
from gantry.gateway.pipeline import Gateway
from gantry.gateway.routes import (
    BATCH_PREFIXES,
    BATCH_ROUTES,
    PREFIXES,
    ROUTES,
    match,
    route_table,
)


def test_every_route_has_roles_methods_and_an_endpoint(tmp_path):
    cfg = load_config(env={"GANTRY_SECURITY__DATABASE_URL": f"sqlite:///{tmp_path}/r.db"})
    gw = Gateway(cfg)
    for path, route in [*ROUTES.items(), *PREFIXES]:
        assert route.roles, path
        assert route.methods <= {"GET", "POST", "PUT", "DELETE"}, path
        assert route.handler in gw._endpoints, path


@pytest.mark.parametrize("batches", [False, True])
def test_the_documented_api_and_the_table_are_the_same_paths(batches):
    documented = set(openapi_document("x", batches=batches)["paths"])
    exact = {**ROUTES, **(BATCH_ROUTES if batches else {})}
    prefixes = [*PREFIXES, *(BATCH_PREFIXES if batches else ())]
    # the document spells id paths out: /admin/keys/{key_id}/revoke
    documented_ids = {p for p in documented if "{" in p}
    assert documented - documented_ids == set(exact)
    for p in documented_ids:
        assert any(p.startswith(prefix) for prefix, _ in prefixes), p
    for prefix, _ in prefixes:  # every id route is documented
        assert any(p.startswith(prefix) for p in documented_ids), prefix


@pytest.mark.parametrize("path", ["/", "/v2/chat", "/admin", "/admin/", "/health/", "/v1/models/x"])
def test_unknown_paths_match_nothing(path):
    assert match(ROUTES, path) is None


@pytest.mark.parametrize("auth", ["required", "off"])
def test_no_anonymous_caller_is_ever_an_admin(auth):
    cfg = load_config(env={}, overrides={"security": {"auth": auth}})
    a = Authenticator(cfg, None)
    assert ANONYMOUS.role != "admin"
    with pytest.raises(AuthenticationError if auth == "required" else PermissionDenied):
        a.check(ADMIN, None, "/admin/keys")
    assert a.check(PUBLIC, None, "/health") is ANONYMOUS


def test_public_switches():
    cfg = load_config(env={}, overrides={"security": {"metrics_public": True}})
    assert route_table(cfg)["/metrics"].roles is PUBLIC
    assert route_table(cfg)["/readyz"].roles is PUBLIC  # readyz_public is the default
