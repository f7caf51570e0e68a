"""``python -m gantry.sim serve MODEL [flags]``: the simulator behind vLLM's own command line.

The engine supervisor builds one ``vllm serve`` argument list and runs it either with
``vllm`` or with this module, so the simulated path checks the very argv a GPU box would
get. Flags the simulator models change its behaviour; a few that cannot matter to a
simulated engine are accepted and ignored (``NO_EFFECT``); any other flag is refused the
way vLLM's parser refuses it, in one line, exit status 2. A few simulator-only flags
(``--gpu``, ``--profile``, ``--speedup``, ``--slow-start``, ``--enable-admin``) keep the
names they have in ``gantry sim``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from gantry.sim.lora import LoraConfigError, LoraSettings, parse_modules, runtime_updating
from gantry.sim.pd import PDConfigError, kv_transfer_config
from gantry.sim.settings import BUFFER_STEPS, SimConfigError, SimSettings

PROG = "gantry.sim serve"

# vLLM flags with no effect on a simulated engine: accepted so that one argv serves both.
NO_EFFECT_SWITCHES = (
    "--trust-remote-code",
    "--enforce-eager",
    "--disable-log-requests",
    "--disable-log-stats",
    "--disable-uvicorn-access-log",
    "--enable-log-requests",
)
NO_EFFECT_VALUES = ("--download-dir", "--load-format", "--revision", "--uvicorn-log-level")
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
_SIZE = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<unit>[kKmMgG]?)")
_UNITS = {"": 1, "k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2, "g": 1000**3, "G": 1024**3}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SimConfigError(message)


def _model_len(text: str) -> int:
    """vLLM's ``--max-model-len``: an int, ``1k``/``1K`` notation, or -1/auto (what fits)."""
    if text.lower() in ("-1", "auto"):
        return -1
    m = _SIZE.fullmatch(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}")
    return int(float(m["n"]) * _UNITS[m["unit"]])


def _parser() -> _Parser:
    p = _Parser(prog=PROG, add_help=True, allow_abbrev=False)
    a = p.add_argument
    a("model_tag", nargs="?", metavar="MODEL")
    a("--model", dest="model_opt")
    a("--host", default="127.0.0.1")
    a("--port", type=int, default=8000)
    a("--served-model-name", nargs="+", default=[])
    a("--tensor-parallel-size", "-tp", type=int, default=1)
    a("--max-model-len", type=_model_len)
    a("--gpu-memory-utilization", type=float, default=0.92)
    a("--kv-cache-dtype", default="auto")
    a("--block-size", type=int, default=16)
    a("--num-gpu-blocks-override", type=int)
    a("--max-num-seqs", type=int)
    a("--max-num-batched-tokens", type=int)
    a("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    a("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=True)
    a("--long-prefill-token-threshold", type=int, default=0)
    a("--async-scheduling", action=argparse.BooleanOptionalAction, default=True)
    a("--dtype", default="auto", choices=list(DTYPES))
    a("--quantization", "-q", choices=["awq", "awq_marlin", "gptq", "gptq_marlin", "fp8"])
    a("--seed", type=int, default=0)
    a("--tokenizer")
    a("--api-key", action="append", default=[])
    a("--kv-events-config")
    a("--enable-prompt-tokens-details", action="store_true")
    a("--enable-auto-tool-choice", action="store_true")
    a("--tool-call-parser")
    a("--max-logprobs", type=int, default=20)
    a("--max-num-queued-reqs", type=int)
    a("--max-num-queued-tokens", type=int)
    a("--enable-server-load-tracking", action="store_true")
    a("--tokens-only", action="store_true")
    a("--enable-scale-out", action="store_true")
    a("--kv-transfer-config")
    a("--enable-lora", action="store_true")
    a("--max-loras", type=int, default=1)
    a("--max-lora-rank", type=int, default=16)
    a("--max-cpu-loras", type=int)  # accepted; the simulator keeps every adapter in "CPU"
    a("--lora-modules", nargs="+", action="extend", default=[])
    for flag in NO_EFFECT_SWITCHES:
        a(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in NO_EFFECT_VALUES:
        a(flag, help=argparse.SUPPRESS)
    # simulator-only, named as in `gantry sim`
    a("--gpu", default="L4")
    a("--profile", choices=["realistic", "instant"], default="realistic")
    a("--speedup", type=float, default=1.0)
    a("--slow-start", type=float, default=0.0)
    a("--enable-admin", action="store_true")
    a("--pd-role", choices=["prefill", "decode", "both"])
    a("--kv-link")
    a("--log-level", default="warning")
    return p


@dataclass(frozen=True, slots=True)
class ServeArgs:
    settings: SimSettings
    host: str
    port: int
    log_level: str


def parse(argv: Sequence[str]) -> ServeArgs:
    """``serve MODEL [flags]`` → settings; raises ``SimConfigError`` with vLLM's wording."""
    args = list(argv)
    if not args or args[0] != "serve":
        raise SimConfigError("the only command is 'serve': serve MODEL [flags]")
    ns, extra = _parser().parse_known_args(args[1:])
    if extra:
        raise SimConfigError(f"unrecognized arguments: {' '.join(extra)}")
    model = ns.model_tag or ns.model_opt
    if not model:
        raise SimConfigError("the following arguments are required: MODEL")
    kv_endpoint, kv_topic, kv_replay, kv_buffer_steps = _kv_events(ns.kv_events_config)
    try:
        kv_transfer = kv_transfer_config(
            ns.kv_transfer_config, pd_role=ns.pd_role, link=ns.kv_link, env=dict(os.environ)
        )
    except PDConfigError as exc:
        raise SimConfigError(str(exc)) from None
    settings = SimSettings(
        model=model,
        gpu=ns.gpu,
        served_model_names=tuple(ns.served_model_name),
        tensor_parallel_size=ns.tensor_parallel_size,
        max_model_len=ns.max_model_len,
        gpu_memory_utilization=ns.gpu_memory_utilization,
        kv_cache_dtype=ns.kv_cache_dtype,
        block_size=ns.block_size,
        num_gpu_blocks_override=ns.num_gpu_blocks_override,
        max_num_seqs=ns.max_num_seqs,
        max_num_batched_tokens=ns.max_num_batched_tokens,
        enable_prefix_caching=ns.enable_prefix_caching,
        enable_chunked_prefill=ns.enable_chunked_prefill,
        long_prefill_token_threshold=ns.long_prefill_token_threshold,
        async_scheduling=ns.async_scheduling,
        speedup=ns.speedup,
        instant=ns.profile == "instant",
        seed=ns.seed,
        tokenizer=ns.tokenizer,
        api_keys=tuple(ns.api_key),
        kv_events=kv_endpoint,
        kv_events_topic=kv_topic,
        enable_prompt_tokens_details=ns.enable_prompt_tokens_details,
        admin=ns.enable_admin,
        slow_start_s=ns.slow_start,
        dtype=ns.dtype,
        quantization=ns.quantization,
        enable_auto_tool_choice=ns.enable_auto_tool_choice,
        tool_call_parser=ns.tool_call_parser,
        max_logprobs=ns.max_logprobs,
        max_num_queued_reqs=ns.max_num_queued_reqs,
        max_num_queued_tokens=ns.max_num_queued_tokens,
        enable_server_load_tracking=ns.enable_server_load_tracking,
        tokens_only=ns.tokens_only or ns.enable_scale_out,
        kv_events_replay=kv_replay,
        kv_events_buffer_steps=kv_buffer_steps,
        kv_transfer=kv_transfer,
        lora=_lora(ns),
    )
    return ServeArgs(settings, ns.host, ns.port, ns.log_level)


def _lora(ns: argparse.Namespace) -> LoraSettings:
    try:
        modules = parse_modules(ns.lora_modules)
    except LoraConfigError as exc:
        raise SimConfigError(f"argument --lora-modules: {exc}") from None
    return LoraSettings(
        enabled=ns.enable_lora,
        max_loras=ns.max_loras,
        max_lora_rank=ns.max_lora_rank,
        modules=modules,
        runtime_updating=runtime_updating(os.environ),  # read once, at start-up
    )


def _kv_events(text: str | None) -> tuple[str | None, str, str | None, int]:
    """(endpoint, topic, replay_endpoint, buffer_steps) from vLLM's --kv-events-config."""
    if not text:
        return None, "", None, BUFFER_STEPS
    try:
        cfg: Any = json.loads(text)
    except ValueError as exc:
        raise SimConfigError(f"argument --kv-events-config: invalid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise SimConfigError("argument --kv-events-config: expected a JSON object")
    if not cfg.get("enable_kv_cache_events"):
        return None, "", None, BUFFER_STEPS
    endpoint = str(cfg.get("endpoint") or "tcp://*:5557")
    replay = cfg.get("replay_endpoint")
    steps = cfg.get("buffer_steps", BUFFER_STEPS)
    if not isinstance(steps, int) or isinstance(steps, bool):
        raise SimConfigError(
            f"argument --kv-events-config: buffer_steps must be an integer, not {steps!r}"
        )
    return endpoint, str(cfg.get("topic") or ""), str(replay) if replay else None, steps


def main(argv: Sequence[str]) -> int:
    try:
        serve_args = parse(argv)
        serve_args.settings.resolve()  # refuse what cannot work before anything listens
    except SimConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    import logging

    from gantry.sim.run import serve  # uvicorn is imported only to serve

    logging.basicConfig(
        level=getattr(logging, serve_args.log_level.upper(), logging.WARNING),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    s = serve_args.settings
    print(
        f"simulated vLLM engine: {s.model} on a simulated {s.gpu} (tp={s.tensor_parallel_size}),"
        f" http://{serve_args.host}:{serve_args.port}",
        file=sys.stderr,
        flush=True,
    )
    serve(s, serve_args.host, serve_args.port, log_level="warning")
    return 0


__all__ = ["NO_EFFECT_SWITCHES", "NO_EFFECT_VALUES", "ServeArgs", "main", "parse"]
