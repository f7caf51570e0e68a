"""Prepare: validate a request once and decide what to send. Pure (no I/O, no clock).

From the parsed body, the caller's identity, the request headers, a slice of the
configuration and the current pool snapshot, ``prepare()`` builds a ``Prepared``: the
model after aliasing, whether the caller may use it, the body to send (PII redacted,
usage always requested for streams), the headers engines get, the timeout and the
admission priority. Every refusal is a ``ClientError`` subclass with its status.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gantry.config import GatewayConfig, RedactionConfig, Split, SplitTarget, TierLimits
from gantry.errors import ClientError, ModelNotFound, PermissionDenied
from gantry.gateway.auth import Identity
from gantry.gateway.redact import redact_body
from gantry.protocol import RequestInfo, RequestShapeError, inspect_request
from gantry.routing import PoolSnapshot, RouteRequest

# Request headers passed on to engines (besides content-type and the request id).
FORWARD = (b"traceparent", b"tracestate", b"x-session-id", b"x-data-parallel-rank")


@dataclass(frozen=True, slots=True)
class PrepareSettings:
    """The configuration ``prepare`` reads, cut once from ``GatewayConfig``."""

    aliases: Mapping[str, str]
    splits: Mapping[str, Split]
    redaction: RedactionConfig
    tiers: Mapping[str, TierLimits]
    total_s: float
    stream_total_s: float
    max_override_s: float
    session_header: bytes
    priority_header: bytes
    priority_header_name: str

    @classmethod
    def of(cls, cfg: GatewayConfig) -> PrepareSettings:
        return cls(
            dict(cfg.aliases),
            dict(cfg.splits),
            cfg.redaction,
            dict(cfg.tiers),
            cfg.timeouts.total_s,
            cfg.timeouts.stream_total_s,
            cfg.timeouts.max_override_s,
            cfg.routing.session_header.lower().encode(),
            cfg.admission.priority_header.lower().encode(),
            cfg.admission.priority_header,
        )


@dataclass(slots=True)
class Prepared:  # built per request: not frozen (frozen dataclasses cost ~1 us more)
    endpoint: str
    requested: str  # the model name the client used (maybe an alias)
    model: str  # the model engines serve
    stream: bool
    include_usage: bool  # the client asked for the usage chunk
    body: bytes  # what engines get
    engine_headers: dict[str, str]
    route: RouteRequest
    timeout_s: float  # for the whole request
    priority: int  # lower is served first
    max_tokens: int | None
    redactions: int  # PII items masked
    group: str | None = None  # only engines of this group (a split's arm)
    split: str | None = None  # the split the request went through, and its arm
    arm: str | None = None


def prepare(
    endpoint: str,
    raw: bytes,
    body: Any,
    ident: Identity,
    headers: Mapping[bytes, str],
    rid: str,
    s: PrepareSettings,
    snap: PoolSnapshot,
) -> Prepared:
    try:
        info = inspect_request(endpoint, body) if endpoint.startswith("/v1") else None
    except RequestShapeError as exc:
        raise ClientError(exc.message, param=exc.param) from None
    if not isinstance(body, dict):
        raise ClientError("Request body must be a JSON object.", param="body")
    requested = info.model if info else body.get("model")
    if requested is not None and not isinstance(requested, str):
        raise ClientError("'model' must be a string.", param="model")
    if not requested:
        if endpoint.startswith("/v1") or len(snap.by_model) != 1:
            raise ClientError("You must provide a model parameter.", param="model")
        requested = next(iter(snap.by_model))
    split = s.splits.get(requested)
    target = None
    if split is not None:
        target = pick_arm(requested, split, _sticky_id(split, ident, headers, info, s, rid))
        model = target.model
    else:
        model = s.aliases.get(requested, requested)
    if model not in snap.by_model:
        raise ModelNotFound(f"The model '{requested}' does not exist.", param="model")
    if ident.models and not (ident.may_use(requested) or ident.may_use(model)):
        raise PermissionDenied(f"This key may not use model '{requested}'.", param="model")
    redactions = 0
    if s.redaction.enabled and redacts(s.redaction, ident, model):
        redactions = redact_body(body, s.redaction.kinds)
        raw = orjson.dumps(body)
    stream = bool(info and info.stream)
    include_usage = bool(info and info.include_usage)
    if model != requested or (stream and not include_usage):
        if model == requested and b'"stream_options"' not in raw and not redactions:
            raw = with_usage(raw)  # no re-encoding: ~1 us, and ~50 us for a 100 KB prompt
        else:
            body["model"] = model
            if stream:  # always ask the engine for usage, to account
                opts = body.get("stream_options") or {}
                body["stream_options"] = {**opts, "include_usage": True}
            raw = orjson.dumps(body)
    engine_headers = {"content-type": "application/json", "x-request-id": rid}
    for k in FORWARD:
        v = headers.get(k)
        if v is not None:
            engine_headers[k.decode()] = v
    session = headers.get(s.session_header) or (info.user if info else None)
    return Prepared(
        endpoint,
        requested,
        model,
        stream,
        include_usage,
        raw,
        engine_headers,
        RouteRequest(model=model, session=session),
        timeout_of(headers.get(b"x-request-timeout"), stream, s),
        priority_of(headers.get(s.priority_header), ident, s),
        info.max_tokens if info else None,
        redactions,
        target.group if target else None,
        requested if target else None,
        target.arm if target else None,
    )


def pick_arm(name: str, split: Split, sticky: str) -> SplitTarget:
    """The split's target for a sticky id: the same id always gets the same arm while the
    weights stay the same (a point on [0, 1) from a hash, against cumulative weights)."""
    h = hashlib.blake2b(f"{name}\0{sticky}".encode(), digest_size=8).digest()
    point = int.from_bytes(h, "big") / 2**64 * sum(t.weight for t in split.targets)
    for t in split.targets:
        point -= t.weight
        if point < 0:
            return t
    return split.targets[-1]


def _sticky_id(
    split: Split,
    ident: Identity,
    headers: Mapping[bytes, str],
    info: RequestInfo | None,
    s: PrepareSettings,
    rid: str,
) -> str:
    """Who the split keeps on one arm; without one, the request id (a fresh draw)."""
    if split.sticky == "key" and ident.key_id != "-":
        return ident.key_id
    if split.sticky == "tenant" and ident.tenant != "-":
        return ident.tenant
    if split.sticky != "none":
        session = headers.get(s.session_header) or (info.user if info else None)
        if session:
            return session
    return rid


def timeout_of(raw: str | None, stream: bool, s: PrepareSettings) -> float:
    if raw is None:
        return s.stream_total_s if stream else s.total_s
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ClientError(
            "X-Request-Timeout must be a positive number of seconds.", param="x-request-timeout"
        )
    return min(value, s.max_override_s)


def priority_of(raw: str | None, ident: Identity, s: PrepareSettings) -> int:
    """Clients may lower their own priority, never raise it above their key's."""
    try:
        requested = int(raw) if raw is not None else 0
    except ValueError:
        raise ClientError(
            f"{s.priority_header_name} must be an integer (lower is served first).",
            param="priority",
        ) from None
    if ident.key_id == "-":
        return requested
    tier = s.tiers.get(ident.tier)
    base = ident.priority if ident.priority is not None else (tier.priority if tier else 0)
    return max(base, requested)


def redacts(r: RedactionConfig, ident: Identity, model: str) -> bool:
    scoped = r.models or r.tenants or r.keys
    return not scoped or model in r.models or ident.tenant in r.tenants or ident.key_id in r.keys


def with_usage(raw: bytes) -> bytes:
    """A JSON object body (without ``stream_options``) that asks for the usage chunk."""
    i = raw.index(b"{") + 1
    return b'{"stream_options":{"include_usage":true},' + raw[i:]


def with_model(raw: bytes, model: str) -> bytes:
    """The body with another model name (for the fallback chain)."""
    body = orjson.loads(raw)
    body["model"] = model
    return orjson.dumps(body)
