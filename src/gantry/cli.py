"""The ``gantry`` command: one Typer app, each verb a thin call into a package."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gantry.config import ConfigSource, GatewayConfig, load_config, masked
from gantry.console import fail
from gantry.errors import ConfigError, GantryError

app = typer.Typer(
    name="gantry",
    add_completion=False,
    no_args_is_help=True,
    help="A production serving stack for vLLM.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Show or check gateway configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
keys_app = typer.Typer(
    help="Manage API keys (stored hashed in security.database_url).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")


def _mount_bench() -> None:
    from gantry.bench.command import bench_app

    app.add_typer(bench_app, name="bench")


_mount_bench()


def _mount_supervisor() -> None:
    from gantry.supervisor.command import engine, gpus

    # vLLM's own flags follow gantry engine's options and reach vllm serve
    passthrough = {"allow_extra_args": True, "ignore_unknown_options": True}
    app.command(context_settings=passthrough)(engine)
    app.command()(gpus)


_mount_supervisor()


def _mount_planner() -> None:
    from gantry.planner.command import plan, tune

    app.command()(plan)
    app.command()(tune)


_mount_planner()


ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", metavar="PATH", help="YAML config file.")
]
# Arguments are named in the usage line and the docstring; Typer would list them with a
# Python type name (``KEY_ID <str>``).
KeyId = Annotated[str, typer.Argument(metavar="KEY_ID", hidden=True)]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def sim(
    model: Annotated[
        str, typer.Option(metavar="MODEL", help="Built-in model name or a path to config.json.")
    ] = "qwen2.5-1.5b-instruct",
    gpu: Annotated[
        str,
        typer.Option(
            metavar="GPU",
            help="GPU profile: T4, L4, A10G, A4000, A40, A100-40GB, A100-80GB, H100-80GB, H200.",
        ),
    ] = "L4",
    host: Annotated[str, typer.Option(metavar="HOST", help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Listen port.")] = 8000,
    served_model_name: Annotated[
        list[str] | None,
        typer.Option(metavar="NAME", help="Name(s) the model is served as (repeatable)."),
    ] = None,
    tensor_parallel_size: Annotated[
        int, typer.Option("--tensor-parallel-size", "-tp", metavar="N", help="GPUs per engine.")
    ] = 1,
    max_model_len: Annotated[
        int | None, typer.Option(metavar="TOKENS", help="Context length (default: the model's).")
    ] = None,
    gpu_memory_utilization: Annotated[
        float, typer.Option(metavar="FRACTION", help="Share of GPU memory the engine may use.")
    ] = 0.92,
    kv_cache_dtype: Annotated[
        str,
        typer.Option(metavar="DTYPE", help="auto, bfloat16, float16, fp8, fp8_e4m3 or fp8_e5m2."),
    ] = "auto",
    block_size: Annotated[int, typer.Option(metavar="TOKENS", help="Tokens per KV block.")] = 16,
    num_gpu_blocks_override: Annotated[
        int | None, typer.Option(metavar="N", help="KV blocks, instead of sizing from memory.")
    ] = None,
    max_num_seqs: Annotated[
        int | None, typer.Option(metavar="N", help="Sequences per batch (default: by GPU).")
    ] = None,
    max_num_batched_tokens: Annotated[
        int | None, typer.Option(metavar="TOKENS", help="Tokens per step (default: by GPU).")
    ] = None,
    enable_prefix_caching: Annotated[
        bool, typer.Option("--enable-prefix-caching/--no-enable-prefix-caching")
    ] = True,
    enable_chunked_prefill: Annotated[
        bool, typer.Option("--enable-chunked-prefill/--no-enable-chunked-prefill")
    ] = True,
    long_prefill_token_threshold: Annotated[
        int, typer.Option(metavar="TOKENS", help="Prefill tokens per request and step (0: no cap).")
    ] = 0,
    async_scheduling: Annotated[
        bool,
        typer.Option(
            "--async-scheduling/--no-async-scheduling",
            help="Choose the next batch while a step runs (vLLM's default).",
        ),
    ] = True,
    profile: Annotated[
        str, typer.Option(metavar="PROFILE", help="'realistic' or 'instant' (no delays).")
    ] = "realistic",
    speedup: Annotated[
        float, typer.Option(metavar="FACTOR", help="Run the model clock this many times faster.")
    ] = 1.0,
    jitter: Annotated[
        float, typer.Option(metavar="FRACTION", help="Relative std-dev of step times (seeded).")
    ] = 0.0,
    seed: Annotated[int, typer.Option(metavar="N", help="Random seed.")] = 0,
    tokenizer: Annotated[
        str | None, typer.Option(metavar="TOKENIZER", help="'builtin' or a tokenizer.json path.")
    ] = None,
    api_key: Annotated[
        list[str] | None, typer.Option(metavar="KEY", help="Require this key (repeatable).")
    ] = None,
    kv_events: Annotated[
        str | None,
        typer.Option(metavar="ENDPOINT", help="Publish KV events on ZMQ PUB, e.g. tcp://*:5557."),
    ] = None,
    enable_prompt_tokens_details: Annotated[
        bool, typer.Option("--enable-prompt-tokens-details/--no-enable-prompt-tokens-details")
    ] = True,
    enable_auto_tool_choice: Annotated[
        bool, typer.Option(help="Let the model call tools on its own (tool_choice auto).")
    ] = False,
    tool_call_parser: Annotated[
        str | None, typer.Option(metavar="NAME", help="Tool-call parser, e.g. hermes.")
    ] = None,
    max_logprobs: Annotated[
        int, typer.Option(metavar="N", help="Largest logprobs / top_logprobs accepted.")
    ] = 20,
    max_num_queued_reqs: Annotated[
        int | None, typer.Option(metavar="N", help="Answer 503 beyond N requests in flight.")
    ] = None,
    max_num_queued_tokens: Annotated[
        int | None,
        typer.Option(metavar="TOKENS", help="Answer 503 beyond this many prefill tokens."),
    ] = None,
    enable_server_load_tracking: Annotated[
        bool, typer.Option(help="Count requests in flight for GET /load.")
    ] = False,
    kv_events_replay: Annotated[
        str | None,
        typer.Option(metavar="ENDPOINT", help="Replay KV events on ZMQ ROUTER, e.g. tcp://*:5558."),
    ] = None,
    kv_events_buffer_steps: Annotated[
        int, typer.Option(metavar="N", help="Batches kept for replay (vLLM's buffer_steps).")
    ] = 10_000,
    tokens_only: Annotated[
        bool, typer.Option("--tokens-only", help="Serve /inference/v1/generate (else 403).")
    ] = False,
    kv_transfer_config: Annotated[
        str | None,
        typer.Option(
            metavar="JSON",
            help='vLLM\'s P/D flag, e.g. {"kv_connector":"NixlConnector","kv_role":"kv_both"}.',
        ),
    ] = None,
    pd_role: Annotated[
        str | None,
        typer.Option(metavar="ROLE", help="Disaggregated serving: prefill, decode or both."),
    ] = None,
    kv_link: Annotated[
        str | None,
        typer.Option(metavar="LINK", help="KV-transfer link: nvlink, rdma, tcp or GB/s."),
    ] = None,
    kv_transfer_timeout: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Give up on KV never received (VLLM_NIXL_ABORT_REQUEST_TIMEOUT, 480).",
        ),
    ] = None,
    enable_lora: Annotated[bool, typer.Option(help="Serve LoRA adapters.")] = False,
    max_loras: Annotated[
        int, typer.Option(metavar="N", help="Distinct LoRA adapters in one batch.")
    ] = 1,
    max_lora_rank: Annotated[int, typer.Option(metavar="R", help="Largest adapter rank.")] = 16,
    lora_modules: Annotated[
        list[str] | None,
        typer.Option(metavar="NAME=PATH", help="A LoRA adapter loaded at start (repeatable)."),
    ] = None,
    enable_admin: Annotated[
        bool,
        typer.Option(help="Serve /sim/faults, /sim/crash and /sim/stats (run-time faults)."),
    ] = False,
    fault_error: Annotated[
        list[str] | None,
        typer.Option(
            metavar="STATUS=P", help="Answer STATUS with probability P, e.g. 503=0.1 (repeatable)."
        ),
    ] = None,
    fault_latency_ms: Annotated[
        float, typer.Option(metavar="MS", help="Delay before every first token.")
    ] = 0.0,
    fault_spike_rate: Annotated[
        float, typer.Option(metavar="P", help="Probability of a latency spike.")
    ] = 0.0,
    fault_spike_ms: Annotated[float, typer.Option(metavar="MS", help="Length of a spike.")] = 0.0,
    fault_hang_rate: Annotated[
        float, typer.Option(metavar="P", help="Probability of never answering.")
    ] = 0.0,
    fault_stall_rate: Annotated[
        float, typer.Option(metavar="P", help="Probability of a stream that stops.")
    ] = 0.0,
    fault_drop_rate: Annotated[
        float, typer.Option(metavar="P", help="Probability of a dropped connection.")
    ] = 0.0,
    fault_crash_after: Annotated[
        int, typer.Option(metavar="N", help="SIGKILL itself after N requests (0: never).")
    ] = 0,
    fault_slowdown: Annotated[
        float, typer.Option(metavar="FACTOR", help="Multiply every step time.")
    ] = 1.0,
    fault_kv_reserve: Annotated[
        float, typer.Option(metavar="FRACTION", help="KV blocks held back (KV pressure).")
    ] = 0.0,
    slow_start: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="Wait before listening, as vLLM does while loading."),
    ] = 0.0,
    engines: Annotated[
        int, typer.Option(metavar="N", help="Start N engines on base-port..base-port+N-1.")
    ] = 1,
    base_port: Annotated[
        int, typer.Option(metavar="PORT", help="First port when --engines > 1.")
    ] = 8100,
    log_level: Annotated[
        str, typer.Option(metavar="LEVEL", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Run a simulated vLLM engine (no GPU needed)."""
    from gantry.sim.faults import FaultConfig, parse_error_rates
    from gantry.sim.lora import LoraSettings, parse_modules, runtime_updating
    from gantry.sim.run import run_cluster, serve
    from gantry.sim.settings import SimConfigError, SimSettings

    _setup_logging(log_level)
    if profile not in ("realistic", "instant"):
        fail(f"--profile must be 'realistic' or 'instant', not {profile!r}")
    if engines < 1:
        fail("--engines must be at least 1")
    try:
        faults = FaultConfig()
        faults.update(
            {
                "error_rate": parse_error_rates(fault_error or []),
                "latency_ms": fault_latency_ms,
                "spike_rate": fault_spike_rate,
                "spike_ms": fault_spike_ms,
                "hang_rate": fault_hang_rate,
                "stall_rate": fault_stall_rate,
                "drop_rate": fault_drop_rate,
                "crash_after": fault_crash_after,
                "slowdown": fault_slowdown,
                "kv_reserve_frac": fault_kv_reserve,
            }
        )
        settings = SimSettings(
            model=model,
            gpu=gpu,
            served_model_names=tuple(served_model_name or ()),
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_dtype=kv_cache_dtype,
            block_size=block_size,
            num_gpu_blocks_override=num_gpu_blocks_override,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            enable_prefix_caching=enable_prefix_caching,
            enable_chunked_prefill=enable_chunked_prefill,
            long_prefill_token_threshold=long_prefill_token_threshold,
            async_scheduling=async_scheduling,
            speedup=speedup,
            instant=profile == "instant",
            jitter=jitter,
            seed=seed,
            tokenizer=tokenizer,
            api_keys=tuple(api_key or ()),
            kv_events=kv_events,
            enable_prompt_tokens_details=enable_prompt_tokens_details,
            enable_auto_tool_choice=enable_auto_tool_choice,
            tool_call_parser=tool_call_parser,
            max_logprobs=max_logprobs,
            max_num_queued_reqs=max_num_queued_reqs,
            max_num_queued_tokens=max_num_queued_tokens,
            enable_server_load_tracking=enable_server_load_tracking,
            kv_events_replay=kv_events_replay,
            kv_events_buffer_steps=kv_events_buffer_steps,
            tokens_only=tokens_only,
            lora=LoraSettings(
                enabled=enable_lora,
                max_loras=max_loras,
                max_lora_rank=max_lora_rank,
                modules=parse_modules(lora_modules or ()),
                runtime_updating=runtime_updating(os.environ),
            ),
            admin=enable_admin,
            faults=faults,
            slow_start_s=slow_start,
            kv_transfer=_kv_transfer(kv_transfer_config, pd_role, kv_link, kv_transfer_timeout),
        )
        settings.resolve()
    except (ValueError, SimConfigError) as exc:
        fail(str(exc))
    if engines > 1:
        argv = _strip_cluster_args(sys.argv[2:])
        raise typer.Exit(run_cluster(argv, engines, base_port, kv_events))
    serve(settings, host, port, log_level="warning")


def _kv_transfer(
    text: str | None, role: str | None, link: str | None, timeout: float | None
) -> Any:
    import os

    from gantry.sim.pd import kv_transfer_config

    return kv_transfer_config(
        text, pd_role=role, link=link, timeout_s=timeout, env=dict(os.environ)
    )


def _strip_cluster_args(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=")[0]
        if name in ("--engines", "--base-port", "--port", "--kv-events"):
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", metavar="PATH", help="YAML config file.")
    ] = None,
    engine: Annotated[
        list[str] | None,
        typer.Option(
            metavar="URL",
            help="URL of an engine that already runs (repeatable); no config file needed.",
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(metavar="HOST", help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(metavar="PORT", help="Listen port.")] = None,
    workers: Annotated[
        int | None, typer.Option(metavar="N", help="Worker processes (one per core).")
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            metavar="POLICY",
            help="Routing: least_loaded, kv_aware, prefix, round_robin, power_of_two, "
            "session_affinity or sticky_least_loaded.",
        ),
    ] = None,
    ssl_certfile: Annotated[
        str | None, typer.Option(metavar="PATH", help="Serve TLS with this certificate.")
    ] = None,
    ssl_keyfile: Annotated[
        str | None, typer.Option(metavar="PATH", help="The certificate's private key.")
    ] = None,
    request_logs: Annotated[
        bool | None,
        typer.Option(
            "--request-logs/--no-request-logs",
            help="One JSON log line per request (logging.requests; on by default).",
        ),
    ] = None,
) -> None:
    """Run the gateway.

    With no engines configured it starts two simulated engines.
    """
    from gantry.gateway.server import check_workers
    from gantry.gateway.server import serve as run_gateway
    from gantry.observability.tracing import check_tracing

    cfg = _load(
        config,
        engine=engine,
        host=host,
        port=port,
        workers=workers,
        policy=policy,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        request_logs=request_logs,
    )
    if bool(cfg.ssl_certfile) != bool(cfg.ssl_keyfile):
        fail("--ssl-certfile and --ssl-keyfile go together")
    for f in (cfg.ssl_certfile, cfg.ssl_keyfile):
        if f and not Path(f).is_file():
            fail(f"TLS file not found: {f}")
    try:
        check_tracing(cfg.tracing)  # before embedded engines or workers start
        check_workers(cfg)
    except ConfigError as exc:
        fail(f"config: {exc}")
    try:
        # what SIGHUP and POST /admin/reload read: the same file, variables and flags
        loader = ConfigSource(
            str(config) if config else None,
            _overrides(
                engine=engine,
                host=host,
                port=port,
                workers=workers,
                policy=policy,
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
                request_logs=request_logs,
            ),
        )
        run_gateway(cfg, loader=loader)
    except GantryError as exc:
        fail(str(exc))


def _overrides(**flags: object) -> dict[str, object]:
    overrides: dict[str, object] = {
        k: v
        for k, v in flags.items()
        if k in ("host", "port", "workers", "ssl_certfile", "ssl_keyfile") and v is not None
    }
    if flags.get("engine"):
        overrides["engines"] = [{"url": u} for u in flags["engine"]]  # type: ignore[attr-defined]
    if flags.get("policy"):
        overrides["routing"] = {"policy": flags["policy"]}
    if flags.get("request_logs") is not None:
        overrides["logging"] = {"requests": flags["request_logs"]}
    return overrides


def _load(path: Path | None, **flags: object) -> GatewayConfig:
    try:
        return load_config(path, overrides=_overrides(**flags))
    except ConfigError as exc:
        fail(f"config: {exc}")


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
) -> None:
    """Print the effective configuration (secrets masked) as YAML."""
    import yaml

    cfg = _load(config)
    typer.echo(yaml.safe_dump(masked(cfg), sort_keys=False))


@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(metavar="PATH", hidden=True)]) -> None:
    """Validate the config file PATH; exit 0 if it is valid."""
    cfg = _load(file)
    d = cfg.discovery
    sources = [f"{len(cfg.engines)} engine(s)"] if cfg.engines else []
    sources += [f"{len(cfg.launch)} launched"] if cfg.launch else []
    sources += [f"{k} discovery" for k in ("kubernetes", "dns") if getattr(d, k) is not None]
    where = ", ".join(sources) or "embedded default"
    typer.echo(f"{file}: ok ({where}, routing {cfg.routing.policy})")


def _keystore(config: Path | None) -> tuple[Any, Any]:
    from gantry.state.keys import KeyStore
    from gantry.state.sql import make_engine

    cfg = _load(config)
    engine = make_engine(cfg.security.database_url)
    return KeyStore(engine), cfg


async def _with_store(config: Path | None, fn: Any) -> Any:
    from gantry.state.sql import migrate

    store, cfg = _keystore(config)
    try:
        await migrate(store.engine)
        return await fn(store, cfg)
    finally:
        await store.engine.dispose()


@keys_app.command("create")
def keys_create(
    tenant: Annotated[
        str, typer.Option(metavar="TENANT", help="Tenant (team) the key belongs to.")
    ],
    role: Annotated[str, typer.Option(metavar="ROLE", help="admin, user or metrics.")] = "user",
    tier: Annotated[
        str, typer.Option(metavar="TIER", help="Limits tier from the config.")
    ] = "standard",
    name: Annotated[str, typer.Option(metavar="NAME", help="Free-form label.")] = "",
    model: Annotated[
        list[str] | None, typer.Option(metavar="MODEL", help="Allowed model (repeatable).")
    ] = None,
    priority: Annotated[
        int | None, typer.Option(metavar="N", help="Default admission priority.")
    ] = None,
    expires_in: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="Expire this long after now.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Create a key and print its secret, once.

    Only a hash of the secret is stored.
    """
    import asyncio
    import math
    import time

    if expires_in is not None and not (math.isfinite(expires_in) and expires_in > 0):
        fail(f"--expires-in must be a positive number of seconds, not {expires_in}")

    async def go(store: Any, cfg: Any) -> Any:
        if tier not in cfg.tiers:
            fail(f"unknown tier {tier!r}: {', '.join(cfg.tiers)}")
        return await store.create(
            tenant=tenant,
            role=role,
            tier=tier,
            name=name,
            models=tuple(model or ()),
            priority=priority,
            expires_at=None if expires_in is None else time.time() + expires_in,
        )

    try:
        secret, rec = asyncio.run(_with_store(config, go))
    except ValueError as exc:
        fail(str(exc))
    typer.echo(secret)
    typer.echo(f"id={rec.key_id} tenant={rec.tenant} role={rec.role} tier={rec.tier}", err=True)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(metavar="TENANT", help="Only this tenant.")] = None,
    config: ConfigOpt = None,
) -> None:
    """List keys (ids and attributes, never secrets).

    Columns: id, tenant, role, tier, status (active, expired or revoked), expiry
    (UTC, or - for none), allowed models (* for all), name.
    """
    import asyncio
    import time

    async def go(store: Any, _cfg: Any) -> Any:
        return await store.list_keys(tenant)

    now = time.time()
    for rec in asyncio.run(_with_store(config, go)):
        typer.echo(
            f"{rec.key_id}  {rec.tenant}  {rec.role}  {rec.tier}  {rec.status(now)}  "
            f"{_utc(rec.expires_at)}  {','.join(rec.models) or '*'}  {rec.name}"
        )


def _utc(ts: float | None) -> str:
    from datetime import UTC, datetime

    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@keys_app.command("revoke")
def keys_revoke(key_id: KeyId, config: ConfigOpt = None) -> None:
    """Revoke the key KEY_ID.

    Every replica stops accepting it within security.key_refresh_s.
    """
    import asyncio

    async def go(store: Any, _cfg: Any) -> Any:
        return await store.revoke(key_id)

    if not asyncio.run(_with_store(config, go)):
        fail(f"no active key {key_id}")
    typer.echo(f"revoked {key_id}")


@keys_app.command("rotate")
def keys_rotate(key_id: KeyId, config: ConfigOpt = None) -> None:
    """Give the key KEY_ID a new secret; the old one is revoked.

    The new key has a new id and the same attributes.
    """
    import asyncio

    async def go(store: Any, _cfg: Any) -> Any:
        return await store.rotate(key_id)

    try:
        secret, rec = asyncio.run(_with_store(config, go))
    except KeyError:
        fail(f"no active key {key_id}")
    typer.echo(secret)
    typer.echo(f"id={rec.key_id} replaces {key_id}", err=True)


@app.command()
def usage(
    by: Annotated[str, typer.Option(metavar="GROUP", help="key, model, tenant or day.")] = "model",
    days: Annotated[float, typer.Option(metavar="N", help="Only the last N days.")] = 30.0,
    config: ConfigOpt = None,
) -> None:
    """Usage report from the ledger, with costs.

    Costs are per 1M tokens, from the prices in the config.
    """
    import asyncio
    import time

    from gantry.gateway.security import with_costs
    from gantry.state.ledger import report
    from gantry.state.sql import make_engine, migrate

    if by not in ("key", "model", "tenant", "day"):
        fail("--by must be key, model, tenant or day")
    cfg = _load(config)

    async def go() -> Any:
        engine = make_engine(cfg.ledger.database_url or cfg.security.database_url)
        try:
            await migrate(engine)
            return await report(engine, by, time.time() - days * 86400)
        finally:
            await engine.dispose()

    rows = with_costs(asyncio.run(go()), cfg)
    typer.echo(
        f"{by:<24} {'model':<32} {'requests':>9} {'prompt':>10} {'completion':>11} "
        f"{'cached':>8} {'cost':>10}"
    )
    for r in rows:
        cost = "-" if r["cost"] is None else f"{r['cost']:.4f}"
        typer.echo(
            f"{r['group']!s:<24} {r['model']!s:<32} {r['requests']:>9} "
            f"{r['prompt_tokens'] or 0:>10} {r['completion_tokens'] or 0:>11} "
            f"{r['cached_tokens'] or 0:>8} {cost:>10}"
        )


batches_app = typer.Typer(
    help="Batch jobs on a gateway: list, status, cancel, download.",
    no_args_is_help=True,
)
app.add_typer(batches_app, name="batches")
UrlOpt = Annotated[
    str,
    typer.Option(
        "--url",
        envvar="OPENAI_BASE_URL",
        metavar="URL",
        help="The gateway, with or without /v1 (env OPENAI_BASE_URL).",
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="OPENAI_API_KEY",
        metavar="KEY",
        help="A user key (its tenant's batches) or an admin key (all); env OPENAI_API_KEY.",
    ),
]
BatchId = Annotated[str, typer.Argument(metavar="BATCH_ID", hidden=True)]
_GW = "http://127.0.0.1:8080"


def _call(url: str, key: str | None, method: str, path: str, timeout: float = 60.0) -> bytes:
    """One request to the gateway; an error answer or no answer ends the command."""
    import json
    import urllib.error
    import urllib.request

    if not url.startswith(("http://", "https://")):
        fail(f"--url must start with http:// or https://, not {url!r}")
    base = url.rstrip("/").removesuffix("/v1")
    req = urllib.request.Request(base + path, method=method)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return bytes(r.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        fail(f"{exc.code}: {message}", 1)
    except (urllib.error.URLError, OSError) as exc:
        fail(f"cannot reach the gateway at {url}: {getattr(exc, 'reason', exc)}", 1)


def _batch_line(b: dict[str, Any]) -> str:
    c = b["request_counts"]
    done = c["completed"] + c["failed"]
    return (
        f"{b['id']:<40} {b['status']:<12} {done}/{c['total']:<7} "
        f"failed={c['failed']:<6} {b['endpoint']}"
    )


@batches_app.command("list")
def batches_list(
    url: UrlOpt = _GW,
    api_key: ApiKeyOpt = None,
    limit: Annotated[int, typer.Option(metavar="N", help="At most this many.")] = 20,
) -> None:
    """The newest batches, one a line."""
    import json

    for b in json.loads(_call(url, api_key, "GET", f"/v1/batches?limit={limit}"))["data"]:
        typer.echo(_batch_line(b))


@batches_app.command("status")
def batches_status(batch_id: BatchId, url: UrlOpt = _GW, api_key: ApiKeyOpt = None) -> None:
    """One batch: a summary line, then the whole batch object (JSON)."""
    import json

    b = json.loads(_call(url, api_key, "GET", f"/v1/batches/{batch_id}"))
    typer.echo(_batch_line(b))
    typer.echo(json.dumps(b, indent=2))


@batches_app.command("cancel")
def batches_cancel(batch_id: BatchId, url: UrlOpt = _GW, api_key: ApiKeyOpt = None) -> None:
    """Cancel a batch (lines not started do not run)."""
    import json

    b = json.loads(_call(url, api_key, "POST", f"/v1/batches/{batch_id}/cancel"))
    typer.echo(_batch_line(b))


@batches_app.command("download")
def batches_download(
    batch_id: BatchId,
    url: UrlOpt = _GW,
    api_key: ApiKeyOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", metavar="PATH", help="Default: stdout.")
    ] = None,
    errors: Annotated[
        bool, typer.Option("--errors", help="The error file instead of the output file.")
    ] = False,
) -> None:
    """Write a finished batch's output file (or its error file) as JSONL."""
    import json

    b = json.loads(_call(url, api_key, "GET", f"/v1/batches/{batch_id}"))
    fid = b["error_file_id" if errors else "output_file_id"]
    if fid is None:
        what = "error" if errors else "output"
        fail(f"batch {batch_id} is {b['status']} and has no {what} file", 1)
    data = _call(url, api_key, "GET", f"/v1/files/{fid}/content")
    if output is None:
        sys.stdout.buffer.write(data)
        return
    try:
        output.write_bytes(data)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}", 1)
    typer.echo(f"{len(data)} bytes to {output}", err=True)


@app.command()
def status(
    url: Annotated[
        str, typer.Option(metavar="URL", envvar="GANTRY_URL", help="The gateway's address.")
    ] = _GW,
    key: Annotated[
        str | None,
        typer.Option(
            metavar="KEY", envvar="GANTRY_ADMIN_KEY", help="An admin key (or GANTRY_ADMIN_KEY)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The page as JSON.")] = False,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Wait this long.")] = 10.0,
) -> None:
    """One screen on a running gateway (admin key).

    Engines, queues, splits, limits, ledger and discovery, from GET /admin/status.
    """
    import json

    from gantry.gateway.admin_status import render

    if not key:
        fail("an admin key is needed: --key KEY or GANTRY_ADMIN_KEY")
    try:
        page = json.loads(_call(url, key, "GET", "/admin/status", timeout))
    except ValueError:
        fail(f"{url} did not answer JSON: is it a gantry gateway?")
    typer.echo(json.dumps(page, indent=2) if as_json else render(page))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["app", "main"]
