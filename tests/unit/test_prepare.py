"""prepare() is pure: a table of requests and what it decides (no I/O, no clock)."""

from __future__ import annotations

import orjson
import pytest

from gantry.config import load_config
from gantry.errors import ClientError, ModelNotFound, PermissionDenied
from gantry.gateway.auth import ANONYMOUS, Identity
from gantry.gateway.prepare import PrepareSettings, prepare
from gantry.routing import EngineView, PoolSnapshot

CFG = load_config(
    env={},
    overrides={
        "aliases": {"gpt-4": "m"},
        "redaction": {"enabled": True, "tenants": ["pii"]},
        "tiers": {"gold": {"priority": -5}},
    },
)
S = PrepareSettings.of(CFG)
SNAP = PoolSnapshot.build(1, (EngineView("e", "u", ("m", "n"), True),))
USER = Identity("k1", "t", "user", "gold")
LIMITED = Identity("k2", "t", "user", "gold", models=("n",))
PII = Identity("k3", "pii", "user", "gold")


def chat(**kw: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}


def run(
    body: object,
    ident: Identity = ANONYMOUS,
    headers: dict[bytes, str] | None = None,
    endpoint: str = "/v1/chat/completions",
):
    raw = orjson.dumps(body)
    return prepare(endpoint, raw, orjson.loads(raw), ident, headers or {}, "rid", S, SNAP)


def test_plain_request_passes_through_untouched():
    body = chat(temperature=0.5, top_k=3)  # vLLM extras pass through
    p = run(body)
    assert p.body == orjson.dumps(body) and p.model == p.requested == "m"
    assert p.engine_headers == {"content-type": "application/json", "x-request-id": "rid"}
    assert p.timeout_s == CFG.timeouts.total_s and p.priority == 0


@pytest.mark.parametrize("opts", [None, {"include_usage": False}, {"continuous_usage_stats": True}])
def test_streams_always_ask_the_engine_for_usage(opts):
    body = chat(stream=True) if opts is None else chat(stream=True, stream_options=opts)
    p = run(body)
    sent = orjson.loads(p.body)
    assert sent["stream_options"]["include_usage"] is True
    assert sent["messages"] == body["messages"] and p.stream and not p.include_usage
    if opts:
        assert {k: v for k, v in sent["stream_options"].items() if k != "include_usage"} == {
            k: v for k, v in opts.items() if k != "include_usage"
        }


def test_alias_is_resolved_and_the_body_renamed():
    p = run(chat(model="gpt-4", stream=True))
    assert p.requested == "gpt-4" and p.model == "m" and orjson.loads(p.body)["model"] == "m"


@pytest.mark.parametrize(
    ("body", "ident", "headers", "error", "param"),
    [
        (chat(model="zz"), ANONYMOUS, {}, ModelNotFound, "model"),
        (chat(model="m"), LIMITED, {}, PermissionDenied, "model"),
        (chat(model=5), ANONYMOUS, {}, ClientError, "model"),
        ({"model": "m"}, ANONYMOUS, {}, ClientError, "messages"),
        ([1, 2], ANONYMOUS, {}, ClientError, "body"),
        (chat(stream="yes"), ANONYMOUS, {}, ClientError, "stream"),
        (chat(), ANONYMOUS, {b"x-request-timeout": "soon"}, ClientError, "x-request-timeout"),
        (chat(), ANONYMOUS, {b"x-request-timeout": "-3"}, ClientError, "x-request-timeout"),
        (chat(), ANONYMOUS, {b"x-priority": "high"}, ClientError, "priority"),
    ],
)
def test_refusals(body, ident, headers, error, param):
    with pytest.raises(error) as exc:
        run(body, ident, headers)
    assert exc.value.param == param


def test_timeout_priority_session_and_forwarded_headers():
    headers = {
        b"x-request-timeout": "5000",
        b"x-priority": "-100",  # may not raise above the key's
        b"x-session-id": "s1",
        b"traceparent": "00-abc-def-01",
        b"authorization": "Bearer secret",  # never forwarded
    }
    p = run(chat(), USER, headers)
    assert p.timeout_s == CFG.timeouts.max_override_s
    assert p.priority == -5  # the gold tier's
    assert p.route.session == "s1"
    assert p.engine_headers["traceparent"] == "00-abc-def-01"
    assert "authorization" not in p.engine_headers
    assert run(chat(), USER, {b"x-priority": "7"}).priority == 7  # lowering is allowed


def test_redaction_for_the_scoped_tenant_only():
    body = chat(messages=[{"role": "user", "content": "mail me at ann@example.com"}])
    assert b"ann@example.com" in run(body, USER).body
    p = run(body, PII)
    assert b"ann@example.com" not in p.body and p.redactions == 1


def test_tokenize_takes_the_only_model_when_none_is_given():
    one = PoolSnapshot.build(1, (EngineView("e", "u", ("m",), True),))
    raw = b'{"prompt": "x"}'
    p = prepare("/tokenize", raw, orjson.loads(raw), ANONYMOUS, {}, "r", S, one)
    assert p.model == "m"
