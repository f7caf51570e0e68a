"""Gateway configuration: frozen values, built once at the edge.

Precedence (lowest to highest): defaults < YAML file < ``GANTRY_*`` environment
variables (``__`` separates nesting: ``GANTRY_ROUTING__POLICY=round_robin``) < CLI
flags. Validation happens once; every error is reported as one line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gantry.errors import ConfigError

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class EngineSpec(BaseModel):
    model_config = _FROZEN
    url: str
    name: str | None = None
    models: tuple[str, ...] = ()  # empty: read from the engine's /v1/models
    api_key: str | None = Field(default=None, repr=False)
    transport: Literal["h1", "aiohttp"] = "h1"  # h1: gantry's lean HTTP/1.1 client
    kv_events: str | None = None  # the engine's KV-event ZMQ endpoint, e.g. tcp://host:5557
    kv_topic: str = ""  # topic prefix its events carry (vLLM's kv_events_config.topic)
    group: str | None = None  # an engine group, for traffic splits (canary, blue, green)

    @field_validator("kv_events")
    @classmethod
    def _kv(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("tcp://", "ipc://")):
            raise ValueError("kv_events must be a ZMQ endpoint: tcp://host:port or ipc://path")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("engine url must start with http:// or https://")
        return v.rstrip("/")


PolicyName = Literal[
    "least_loaded",
    "round_robin",
    "session_affinity",
    "prefix",
    "kv_aware",
    "power_of_two",
    "sticky_least_loaded",
]


class PrefixRouting(BaseModel):
    """The approximate prefix index (policy ``prefix``; ``kv_aware``'s fallback)."""

    model_config = _FROZEN
    block_chars: int = Field(default=64, ge=8)  # ~16 tokens of text per block
    max_blocks_per_engine: int = Field(default=100_000, ge=1)
    cache_threshold: float = Field(default=0.5, ge=0, le=1)  # shorter matches: least loaded
    balance_abs: float = Field(default=32, ge=0)  # imbalanced when max-min load > this
    balance_rel: float = Field(default=1.5, ge=1)  # ... and max > min x this


class KVWeights(BaseModel):
    model_config = _FROZEN
    prefix: float = Field(default=3.0, ge=0)  # cached prefix blocks / prompt blocks
    queue: float = Field(default=2.0, ge=0)  # load, min-max normalised over candidates
    kv: float = Field(default=2.0, ge=0)  # 1 - KV-cache usage


class KVRouting(BaseModel):
    """Precise prefix routing from the engines' KV events (policy ``kv_aware``)."""

    model_config = _FROZEN
    block_size: int = Field(default=16, ge=1)  # must equal the engines' --block-size
    weights: KVWeights = KVWeights()
    max_blocks_per_engine: int = Field(default=1_000_000, ge=1)
    recovery_s: float = Field(default=30.0, ge=0)  # prefix scoring after lost events
    tokenizer: str | None = None  # a local tokenizer.json; else the engine's /tokenize
    tokenize_cache: int = Field(default=4096, ge=0)  # prompts whose token ids are kept


class ModelRouting(BaseModel):
    model_config = _FROZEN
    policy: PolicyName


class RoutingConfig(BaseModel):
    model_config = _FROZEN
    policy: PolicyName = "least_loaded"
    session_header: str = "x-session-id"
    affinity_load_factor: float = Field(default=1.25, ge=1.0)
    prefix: PrefixRouting = PrefixRouting()
    kv_aware: KVRouting = KVRouting()
    models: dict[str, ModelRouting] = Field(default_factory=dict)  # per-model policy

    def policy_for(self, model: str) -> str:
        m = self.models.get(model)
        return m.policy if m is not None else self.policy


class SplitTarget(BaseModel):
    model_config = _FROZEN
    model: str  # the model that serves this arm
    group: str | None = None  # only engines of this group (engines[].group)
    weight: float = Field(gt=0)

    @property
    def arm(self) -> str:
        return f"{self.model}@{self.group}" if self.group else self.model


class Split(BaseModel):
    """One public model name served by several targets (canary, A/B)."""

    model_config = _FROZEN
    targets: tuple[SplitTarget, ...] = Field(min_length=1)
    sticky: Literal["key", "tenant", "session", "none"] = "key"

    @field_validator("targets")
    @classmethod
    def _arms(cls, v: tuple[SplitTarget, ...]) -> tuple[SplitTarget, ...]:
        arms = [t.arm for t in v]
        if len(set(arms)) != len(arms):
            raise ValueError("each target (model and group) may appear once")
        return v


class Shadow(BaseModel):
    """Mirror a share of a model's requests to a candidate; its answers are discarded."""

    model_config = _FROZEN
    target: str
    share: float = Field(default=0.05, gt=0, le=1)
    max_inflight: int = Field(default=32, ge=1)  # beyond this, mirrors are skipped


class HealthConfig(BaseModel):
    model_config = _FROZEN
    interval_s: float = Field(default=2.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    failure_threshold: int = Field(default=2, ge=1)
    success_threshold: int = Field(default=1, ge=1)
    scrape_metrics: bool = True
    models_refresh_s: float = Field(default=30.0, gt=0)  # re-read /v1/models (and on recovery)


class TimeoutConfig(BaseModel):
    model_config = _FROZEN
    connect_s: float = Field(default=5.0, gt=0)
    ttft_s: float = Field(default=60.0, gt=0)  # streaming: until the first token
    idle_s: float = Field(default=60.0, gt=0)  # streaming: between chunks
    attempt_s: float = Field(default=30.0, gt=0)  # non-streaming: one engine's attempt
    total_s: float = Field(default=60.0, gt=0)  # non-streaming, whole request
    stream_total_s: float = Field(default=300.0, gt=0)  # streaming, whole request
    max_override_s: float = Field(default=600.0, gt=0)  # cap on X-Request-Timeout
    keepalive_interval_s: float = Field(default=15.0, ge=0)  # SSE comments before 1st token


class RetryConfig(BaseModel):
    model_config = _FROZEN
    attempts: int = Field(default=2, ge=0, le=10)  # retries after the first try
    backoff_base_s: float = Field(default=0.02, ge=0)
    backoff_max_s: float = Field(default=1.0, ge=0)
    budget_ratio: float = Field(default=0.2, ge=0)  # retries per request, sustained
    budget_min_per_s: float = Field(default=5.0, ge=0)


class BreakerSettings(BaseModel):
    model_config = _FROZEN
    failure_threshold: int = Field(default=5, ge=1)
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    window: int = Field(default=20, ge=1)
    min_calls: int = Field(default=10, ge=1)
    cooldown_s: float = Field(default=30.0, gt=0)
    half_open_max: int = Field(default=1, ge=1)


class AdmissionConfig(BaseModel):
    model_config = _FROZEN
    max_waiting_per_model: int = Field(default=100, ge=0)
    queue_timeout_s: float = Field(default=30.0, gt=0)
    max_inflight_per_engine: int = Field(default=256, ge=0)  # 0 = no limit
    max_engine_waiting: int = Field(default=64, ge=0)  # engine's own queue; 0 = ignore
    kv_warn: float = Field(default=0.85, gt=0, le=1)
    kv_shed: float = Field(default=0.95, gt=0, le=1)
    priority_header: str = "x-priority"


class IdempotencyConfig(BaseModel):
    model_config = _FROZEN
    enabled: bool = True
    ttl_s: float = Field(default=3600.0, gt=0)
    max_entries: int = Field(default=10_000, ge=1)  # memory store
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)  # larger answers are not kept
    store: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "gantry:idem:"


class ShutdownConfig(BaseModel):
    model_config = _FROZEN
    grace_s: float = Field(default=30.0, ge=0)  # in-flight requests get this long
    # SIGTERM: keep serving this long after /readyz turns 503, while load balancers and
    # Kubernetes endpoints stop sending (SIGINT skips it)
    readiness_delay_s: float = Field(default=5.0, ge=0)


class LimitsConfig(BaseModel):
    model_config = _FROZEN
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_url_bytes: int = Field(default=8192, gt=0)
    keepalive_timeout_s: float = Field(default=30.0, gt=0)  # idle client connections


class LoggingConfig(BaseModel):
    model_config = _FROZEN
    level: Literal["debug", "info", "warning", "error"] = "info"
    json_format: bool = Field(default=True, alias="json")
    requests: bool = True  # one JSON line per request (serve --request-logs/--no-request-logs)
    probe_requests: bool = False  # also for successful /health, /readyz, /metrics calls


class EmbeddedConfig(BaseModel):
    """Simulated engines started when no engine is configured."""

    model_config = _FROZEN
    engines: int = Field(default=2, ge=1, le=16)
    model: str = "qwen2.5-1.5b-instruct"
    gpu: str = "L4"
    served_model_name: str = "qwen2.5-1.5b-instruct"
    profile: Literal["realistic", "instant"] = "realistic"
    speedup: float = Field(default=1.0, gt=0)
    extra_args: tuple[str, ...] = ()


class TracingConfig(BaseModel):
    model_config = _FROZEN
    enabled: bool = False
    service_name: str = "gantry"
    exporter: Literal["console", "otlp", "none"] = "none"
    otlp_endpoint: str | None = None  # None: OTEL_EXPORTER_OTLP_* or the exporter's default
    sample_ratio: float = Field(default=1.0, ge=0, le=1)  # new traces; a parent's flag wins


class JWTConfig(BaseModel):
    model_config = _FROZEN
    enabled: bool = False
    issuer: str | None = None
    audience: str | None = None
    jwks_file: str | None = None  # a local JWKS file (no network)
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    role_claim: str = "role"
    tenant_claim: str = "tenant"
    tier_claim: str = "tier"
    default_role: Literal["admin", "user", "metrics"] = "user"
    default_tier: str = "standard"


class SecurityConfig(BaseModel):
    model_config = _FROZEN
    auth: Literal["required", "off"] = "required"
    database_url: str = "sqlite:///gantry.db"  # keys, usage ledger, audit log
    key_refresh_s: float = Field(default=2.0, gt=0)  # new keys and revocations: every replica
    metrics_public: bool = False
    readyz_public: bool = True
    max_header_bytes: int = Field(default=16384, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)  # slow clients
    jwt: JWTConfig = JWTConfig()

    @field_validator("auth", mode="before")
    @classmethod
    def _yaml_off(cls, v: object) -> object:
        # YAML reads a bare `off` as false (and `on`/`yes` as true).
        if v is False:
            return "off"
        if v is True:
            return "required"
        return v


class TierLimits(BaseModel):
    model_config = _FROZEN
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    concurrent: int | None = Field(default=None, ge=1)
    tokens_per_day: int | None = Field(default=None, ge=1)
    priority: int = 0  # default admission priority of the tier's keys


def _default_tiers() -> dict[str, TierLimits]:
    return {
        "free": TierLimits(rpm=20, tpm=20_000, concurrent=2, tokens_per_day=200_000, priority=10),
        "standard": TierLimits(rpm=600, tpm=600_000, concurrent=32, priority=0),
        "enterprise": TierLimits(rpm=6000, tpm=6_000_000, concurrent=256, priority=-10),
    }


class TenantConfig(BaseModel):
    model_config = _FROZEN
    tier: str | None = None  # limits shared by all of the tenant's keys


class RateLimitConfig(BaseModel):
    model_config = _FROZEN
    store: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "gantry:limit:"
    rate_limits_fail_open: bool = True  # Redis down: let requests through rpm/tpm/concurrency
    quotas_fail_open: bool = False  # Redis down: refuse requests of keys with a daily quota
    default_max_tokens: int = Field(default=256, ge=1)  # estimate when max_tokens is absent


class LedgerConfig(BaseModel):
    model_config = _FROZEN
    # auto: on when security.auth is required (a row per request, per key and tenant);
    # with auth off there is nobody to bill, and per-model totals are in the metrics
    enabled: bool | Literal["auto"] = "auto"
    database_url: str | None = None  # default: security.database_url
    batch_size: int = Field(default=500, ge=1)
    flush_interval_s: float = Field(default=1.0, gt=0)
    max_queue: int = Field(default=100_000, ge=1)


class Price(BaseModel):
    model_config = _FROZEN
    prompt_per_1m: float = 0.0
    completion_per_1m: float = 0.0


class RedactionConfig(BaseModel):
    model_config = _FROZEN
    enabled: bool = False
    models: tuple[str, ...] = ()  # empty with enabled: every model
    tenants: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    kinds: tuple[Literal["email", "phone", "card", "ip", "national_id"], ...] = (
        "email",
        "phone",
        "card",
        "ip",
        "national_id",
    )


class GatewayConfig(BaseModel):
    model_config = _FROZEN
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    engines: tuple[EngineSpec, ...] = ()
    aliases: dict[str, str] = Field(default_factory=dict)
    fallbacks: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    splits: dict[str, Split] = Field(default_factory=dict)  # public name -> weighted targets
    shadow: dict[str, Shadow] = Field(default_factory=dict)  # model -> mirror target
    routing: RoutingConfig = RoutingConfig()
    health: HealthConfig = HealthConfig()
    timeouts: TimeoutConfig = TimeoutConfig()
    retry: RetryConfig = RetryConfig()
    breaker: BreakerSettings = BreakerSettings()
    admission: AdmissionConfig = AdmissionConfig()
    idempotency: IdempotencyConfig = IdempotencyConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    security: SecurityConfig = SecurityConfig()
    tiers: dict[str, TierLimits] = Field(default_factory=_default_tiers)
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    ratelimit: RateLimitConfig = RateLimitConfig()
    ledger: LedgerConfig = LedgerConfig()
    prices: dict[str, Price] = Field(default_factory=dict)
    redaction: RedactionConfig = RedactionConfig()
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    limits: LimitsConfig = LimitsConfig()
    logging: LoggingConfig = LoggingConfig()
    embedded: EmbeddedConfig = EmbeddedConfig()
    tracing: TracingConfig = TracingConfig()

    @model_validator(mode="after")
    def _names(self) -> GatewayConfig:
        clash = set(self.splits) & set(self.aliases)
        if clash:
            raise ValueError(f"{sorted(clash)[0]!r} is both an alias and a split")
        names = [e.name for e in self.engines if e.name]
        if len(set(names)) != len(names):
            raise ValueError("engine names must be unique")
        return self

    @property
    def is_embedded(self) -> bool:
        return not self.engines

    @property
    def ledger_on(self) -> bool:
        e = self.ledger.enabled
        return e is True or (e == "auto" and self.security.auth == "required")


MASK = "***"
# api_key, password, secret, token, and any name ending in _key/_secret/_token/_password
# (api_keys too, but not _tokens: max_tokens counts tokens). Matched on field names, so
# new fields are covered; a bare `key(s)` names key ids (redaction.keys), not secrets.
_SECRET_NAME = re.compile(r"(?:^|_)(?:keys?|secrets?|token|passwords?)$")
_BARE = {"key", "keys"}
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")


def is_secret_name(name: str) -> bool:
    name = name.lower()
    return name not in _BARE and _SECRET_NAME.search(name) is not None


def _mask_userinfo(url: re.Match[str]) -> str:
    scheme, _, rest = url.group().partition("://")
    userinfo, at, host = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not at or not colon or not password or "/" in user:
        return url.group()
    return f"{scheme}://{user}:{MASK}@{host}"


def mask_url(value: str) -> str:
    """``scheme://user:pw@host/x`` -> ``scheme://user:***@host/x``, wherever in ``value``.

    The userinfo runs to the last ``@``, as urllib reads it, so a password holding an
    unencoded ``/`` (SQLAlchemy accepts one) is masked whole. An ``@`` later in a path
    can make this mask more than the password: that beats printing one.
    """
    return _URL.sub(_mask_userinfo, value) if "://" in value else value


def mask_secrets(data: Any, name: str = "") -> Any:
    """Plain data (a config dump, a bad input) with secret fields and URL passwords masked."""
    if isinstance(data, Mapping):
        return {k: mask_secrets(v, str(k)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [mask_secrets(v, name) for v in data]
    if is_secret_name(name) and data not in (None, "") and not isinstance(data, bool):
        return MASK
    return mask_url(data) if isinstance(data, str) else data


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith("GANTRY_") or key == "GANTRY_CONFIG":
            continue
        path = key[len("GANTRY_") :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        try:
            node[path[-1]] = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            node[path[-1]] = raw
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "config"
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    field = next((p for p in reversed(err["loc"]) if isinstance(p, str)), "")
    value = mask_secrets(err.get("input"), field)  # the bad value may be a secret
    shown = f" (got {value!r})" if not isinstance(value, dict | list) else ""
    return f"{loc}: {err['msg']}{shown}{extra}"


one_line_error = _one_line  # the one-line form of a validation error


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {p}{where}: not valid YAML") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping")
    return data


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> GatewayConfig:
    """Build the configuration once; raises ConfigError with a one-line message."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    path = path or env.get("GANTRY_CONFIG")
    if path:
        data = read_yaml(path)
    data = _merge(data, _env_overrides(env))
    data = _merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


@dataclass(frozen=True)
class ConfigSource:
    """Where a running gateway's configuration comes from, to read it again (SIGHUP,
    ``POST /admin/reload``): the same file, ``GANTRY_*`` variables and flags. Picklable,
    so worker processes get it too. ``engines``: engines started by the gateway itself
    (the embedded default), kept when the file configures none."""

    path: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    engines: tuple[EngineSpec, ...] = ()

    def __call__(self) -> GatewayConfig:
        cfg = load_config(self.path, overrides=self.overrides)
        if cfg.is_embedded and self.engines:
            return cfg.model_copy(update={"engines": self.engines})
        return cfg


def masked(cfg: GatewayConfig) -> dict[str, Any]:
    """The configuration as plain data with secrets and URL passwords replaced by ``***``."""
    return dict(mask_secrets(cfg.model_dump(mode="json", by_alias=True)))
