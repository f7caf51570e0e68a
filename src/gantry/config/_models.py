"""The gateway's settings: frozen pydantic models, one per section."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gantry.config._adapters import AdaptersConfig
from gantry.config._discovery import DiscoveryConfig
from gantry.config._launch import LaunchSpec
from gantry.config._routing import RoutingConfig, Shadow, Split

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
    # its replay socket (vLLM's kv_events_config.replay_endpoint), e.g. tcp://host:5558:
    # lost batches are asked for again before the engine's blocks are dropped
    kv_replay: str | None = None
    group: str | None = None  # an engine group, for traffic splits (canary, blue, green)
    role: Literal["prefill", "decode", "both"] | None = None  # P/D; unset: aggregated

    @field_validator("kv_events", "kv_replay")
    @classmethod
    def _kv(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not v.startswith(("tcp://", "ipc://")):
            raise ValueError(
                f"{info.field_name} must be a ZMQ endpoint: tcp://host:port or ipc://path"
            )
        return v

    @model_validator(mode="after")
    def _replay_needs_events(self) -> EngineSpec:
        if self.kv_replay is not None and self.kv_events is None:
            raise ValueError("kv_replay needs kv_events (the stream it replays)")
        return self

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("engine url must start with http:// or https://")
        return v.rstrip("/")


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


class BatchesConfig(BaseModel):
    """``/v1/files`` and ``/v1/batches``: offline jobs run on spare capacity."""

    model_config = _FROZEN
    # auto: on when security.auth is required (the SQL store is then in use anyway)
    enabled: bool | Literal["auto"] = "auto"
    database_url: str | None = None  # default: security.database_url
    storage_dir: str = "gantry-files"  # file contents (created on first upload)
    max_file_bytes: int = Field(default=200 * 1024 * 1024, gt=0)  # upload limit (413 above)
    max_lines: int = Field(default=50_000, ge=1)  # requests in one input file
    max_line_bytes: int = Field(default=1024 * 1024, ge=1)
    concurrency: int = Field(default=16, ge=1)  # lines in flight per replica, at most
    share: float = Field(default=0.5, gt=0, le=1)  # of the engines' in-flight capacity
    priority: int = 1000  # admission priority of batch lines (lower is served first)
    lease_s: float = Field(default=60.0, gt=0)  # a dead replica's lines are free after this
    poll_interval_s: float = Field(default=1.0, gt=0)  # looking for new work
    retry_after_s: float = Field(default=2.0, gt=0)  # a line refused for capacity waits
    max_window_s: float = Field(default=7 * 86400.0, gt=0)  # longest completion window


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
    engines: tuple[EngineSpec, ...] = ()  # or {static: [...], launch: [...]} in YAML
    launch: tuple[LaunchSpec, ...] = ()  # engines gantry starts itself (gantry engine)
    discovery: DiscoveryConfig = DiscoveryConfig()  # engines found at run time (k8s, DNS)
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
    batches: BatchesConfig = BatchesConfig()
    prices: dict[str, Price] = Field(default_factory=dict)
    redaction: RedactionConfig = RedactionConfig()
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    limits: LimitsConfig = LimitsConfig()
    logging: LoggingConfig = LoggingConfig()
    embedded: EmbeddedConfig = EmbeddedConfig()
    tracing: TracingConfig = TracingConfig()
    adapters: AdaptersConfig = AdaptersConfig()  # LoRA adapters (gantry.gateway.adapters)

    @model_validator(mode="before")
    @classmethod
    def _engines_mapping(cls, data: Any) -> Any:
        """``engines: {static: [...], launch: [...], discovery: {...}}`` as well as
        ``engines: [...]``."""
        if isinstance(data, dict) and isinstance(data.get("engines"), dict):
            section = dict(data["engines"])
            data = {k: v for k, v in data.items() if k != "engines"}
            data["engines"] = section.pop("static", ())
            for key in ("launch", "discovery"):
                if key in section:
                    data[key] = section.pop(key)
            if section:
                raise ValueError(
                    f"engines: unknown entries {sorted(section)} (static, launch, discovery)"
                )
        return data

    @model_validator(mode="after")
    def _names(self) -> GatewayConfig:
        clash = set(self.splits) & set(self.aliases)
        if clash:
            raise ValueError(f"{sorted(clash)[0]!r} is both an alias and a split")
        names = [e.name for e in self.engines if e.name]
        if len(set(names)) != len(names):
            raise ValueError("engine names must be unique")
        launched = [ls.name for ls in self.launch]
        if len(set(launched)) != len(launched):
            raise ValueError("engines.launch: each entry needs its own name")
        return self

    @property
    def is_embedded(self) -> bool:
        return not self.engines and not self.launch and not self.discovery.enabled

    @property
    def batches_on(self) -> bool:
        e = self.batches.enabled
        return e is True or (e == "auto" and self.security.auth == "required")

    @property
    def ledger_on(self) -> bool:
        e = self.ledger.enabled
        return e is True or (e == "auto" and self.security.auth == "required")
