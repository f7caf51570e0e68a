"""The user's own ``vllm serve`` flags: which of them gantry would otherwise derive
(they are kept, and the derivation works around them), and the rest, passed on verbatim.

Parsing is by vLLM's flag names, ``--flag value`` and ``--flag=value`` alike; values are
checked here so that a typo fails in one line before any engine starts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gantry.errors import ConfigError

DTYPES = {"auto": "auto", "half": "float16", "float16": "float16", "bfloat16": "bfloat16"}
DTYPES |= {"float": "float32", "float32": "float32"}
KV_DTYPES = ("auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2")
QUANTIZATIONS = ("awq", "awq_marlin", "gptq", "gptq_marlin", "fp8")
_SIZE = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<unit>[kKmM]?)")
_UNITS = {"": 1, "k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2}
# Flags gantry engine sets itself: given among the vLLM flags they would clash.
RESERVED = frozenset({"--host", "--port", "--model"})


def _int(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"argument {flag}: invalid int value: {text!r}") from None


def _model_len(flag: str, text: str) -> int:
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ConfigError(f"argument {flag}: invalid value {text!r} (e.g. 4096, 4k, 4K)")
    return int(float(m["n"]) * _UNITS[m["unit"]])


def _fraction(flag: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ConfigError(f"argument {flag}: invalid float value: {text!r}") from None
    if not 0 < v <= 1:
        raise ConfigError(f"argument {flag}: must be in (0, 1], not {text}")
    return v


def _choice(choices: Sequence[str]) -> Any:
    def parse(flag: str, text: str) -> str:
        if text not in choices:
            raise ConfigError(f"argument {flag}: invalid choice {text!r} ({', '.join(choices)})")
        return text

    return parse


# vLLM flag → (key, parser) for the values gantry derives
VALUED: dict[str, tuple[str, Any]] = {
    "--dtype": ("dtype", _choice(list(DTYPES))),
    "--gpu-memory-utilization": ("gpu_memory_utilization", _fraction),
    "--max-model-len": ("max_model_len", _model_len),
    "--max-num-seqs": ("max_num_seqs", _int),
    "--max-num-batched-tokens": ("max_num_batched_tokens", _int),
    "--tensor-parallel-size": ("tensor_parallel_size", _int),
    "-tp": ("tensor_parallel_size", _int),
    "--quantization": ("quantization", _choice(QUANTIZATIONS)),
    "-q": ("quantization", _choice(QUANTIZATIONS)),
    "--kv-cache-dtype": ("kv_cache_dtype", _choice(KV_DTYPES)),
}
SWITCHES = {
    "--enable-prefix-caching": ("enable_prefix_caching", True),
    "--no-enable-prefix-caching": ("enable_prefix_caching", False),
    "--enable-chunked-prefill": ("enable_chunked_prefill", True),
    "--no-enable-chunked-prefill": ("enable_chunked_prefill", False),
}


@dataclass(frozen=True, slots=True)
class UserArgs:
    """The user's flags: ``values`` (by key, normalised) win over derived ones;
    ``passthrough`` reaches ``vllm serve`` as given."""

    values: Mapping[str, Any] = field(default_factory=dict)
    passthrough: tuple[str, ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.values


def parse_vllm_args(argv: Sequence[str]) -> UserArgs:
    values: dict[str, Any] = {}
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, inline = arg.partition("=")
        if flag in RESERVED:
            raise ConfigError(f"{flag} is an option of gantry engine itself, not a vLLM flag here")
        if flag == "--served-model-name":
            names = [inline] if eq else []
            while not eq and i + 1 < len(args) and not args[i + 1].startswith("-"):
                i += 1
                names.append(args[i])
            if not names:
                raise ConfigError(f"argument {flag}: expected at least one argument")
            values["served_model_name"] = tuple(names)
        elif flag in SWITCHES and not eq:
            key, on = SWITCHES[flag]
            values[key] = on
        elif flag in VALUED:
            if not eq:
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise ConfigError(f"argument {flag}: expected one argument")
                i += 1
                inline = args[i]
            key, parse = VALUED[flag]
            values[key] = parse(flag, inline)
        else:
            rest.append(arg)
        i += 1
    if "dtype" in values:
        values["dtype"] = DTYPES[values["dtype"]]
    for key in ("max_num_seqs", "max_num_batched_tokens", "tensor_parallel_size"):
        if key in values and values[key] < 1:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"argument {flag}: must be at least 1")
    if values.get("max_model_len", 16) < 16:
        raise ConfigError("argument --max-model-len: must be at least 16 tokens")
    return UserArgs(values, tuple(rest))


__all__ = ["DTYPES", "KV_DTYPES", "QUANTIZATIONS", "UserArgs", "parse_vllm_args"]
