"""Disaggregated prefill/decode: vLLM's NixlConnector contract, simulated.

The flow is vLLM's ``kv_transfer_params`` one (``NixlConnector``):

1. The proxy sends the prefill engine the request with ``max_tokens: 1`` and
   ``kv_transfer_params: {"do_remote_decode": true, ...}``. The engine computes the
   prompt, keeps its KV blocks (``delay_free_blocks``) and answers with the params a
   decode engine needs: ``do_remote_prefill``, ``remote_engine_id``,
   ``remote_block_ids``, ``remote_request_id``, ``remote_host``, ``remote_port``,
   ``tp_size``.
2. The proxy sends the decode engine the original request carrying those params. The
   decode engine pulls the blocks from ``remote_host:remote_port`` (the simulator's
   side channel shares its HTTP port: ``POST /sim/kv/pull``), waits the transfer time
   (KV bytes / link bandwidth), stores the blocks in its own cache and schedules the
   request, which then computes only what was not transferred (at least the last
   prompt token, as vLLM's decode does).
3. A prefill engine frees held blocks once a decode engine read them, or after
   ``VLLM_NIXL_ABORT_REQUEST_TIMEOUT`` (480 s). A decode engine that cannot get the KV
   (the prefill engine is gone, the params point nowhere, the blocks were released)
   keeps trying until that same time-out, then fails the request (``"fail"``) or
   computes the prompt itself (``"recompute"``), its ``kv_load_failure_policy``.

Pure parts (configuration, transfer time, the table of held blocks) are plain code;
``pull()`` is the one piece of I/O.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Link:
    """A KV-transfer path: sustained bytes per second per GPU, and a fixed set-up cost."""

    bandwidth: float
    latency_s: float


# Per-GPU figures: NVLink 4 is 450 GB/s each way; RDMA is one 400 Gb/s NDR NIC per GPU
# (~50 GB/s); TCP is a 25 GbE NIC (~3.1 GB/s). Set-up is the descriptor/notify round trip.
LINKS: dict[str, Link] = {
    "nvlink": Link(450e9, 10e-6),
    "rdma": Link(50e9, 50e-6),
    "tcp": Link(3.125e9, 500e-6),
}
ROLES = {"prefill": "kv_producer", "decode": "kv_consumer", "both": "kv_both"}
ABORT_TIMEOUT_S = 480.0  # vLLM's VLLM_NIXL_ABORT_REQUEST_TIMEOUT default
MAX_HELD = 4096  # held transfers kept at most (the KV blocks bound them anyway)


class PDConfigError(ValueError):
    """A ``--kv-transfer-config`` / ``--pd-role`` / ``--kv-link`` that cannot work."""


@dataclass(frozen=True, slots=True)
class KVTransferConfig:
    connector: str = "NixlConnector"
    role: str = "kv_both"  # kv_producer (prefill), kv_consumer (decode) or kv_both
    link: Link = LINKS["rdma"]
    link_name: str = "rdma"
    timeout_s: float = ABORT_TIMEOUT_S
    load_failure_policy: str = "fail"  # or "recompute"
    engine_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def produces(self) -> bool:
        return self.role in ("kv_producer", "kv_both")

    @property
    def consumes(self) -> bool:
        return self.role in ("kv_consumer", "kv_both")


def parse_link(text: str) -> tuple[str, Link]:
    """``nvlink``, ``rdma``, ``tcp`` or a bandwidth in GB/s (``100``)."""
    name = text.strip().lower()
    if name in LINKS:
        return name, LINKS[name]
    try:
        gbps = float(name.removesuffix("gb/s").removesuffix("gbps"))
    except ValueError:
        raise PDConfigError(
            f"unknown KV link {text!r}: choose nvlink, rdma, tcp or a bandwidth in GB/s"
        ) from None
    if gbps <= 0:
        raise PDConfigError("the KV link bandwidth must be positive")
    return f"{gbps:g}GB/s", Link(gbps * 1e9, 50e-6)


def kv_transfer_config(
    text: str | None,
    *,
    pd_role: str | None = None,
    link: str | None = None,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
) -> KVTransferConfig | None:
    """Build the engine's P/D settings from vLLM's JSON flag and the simpler ones.

    ``text`` is ``--kv-transfer-config`` (``{"kv_connector": "NixlConnector",
    "kv_role": "kv_both", "kv_connector_extra_config": {...}}``); ``pd_role`` is
    ``--pd-role prefill|decode|both``; ``env`` supplies
    ``VLLM_NIXL_ABORT_REQUEST_TIMEOUT`` (read once by the CLI).
    """
    if not text and not pd_role:
        return None
    cfg: dict[str, Any] = {}
    if text:
        try:
            cfg = json.loads(text)
        except ValueError as exc:
            raise PDConfigError(f"argument --kv-transfer-config: invalid JSON: {exc}") from None
        if not isinstance(cfg, dict):
            raise PDConfigError("argument --kv-transfer-config: expected a JSON object")
    role = str(cfg.get("kv_role") or "kv_both")
    if pd_role:
        if pd_role not in ROLES:
            raise PDConfigError(f"--pd-role must be prefill, decode or both, not {pd_role!r}")
        role = ROLES[pd_role]
    if role not in ROLES.values():
        raise PDConfigError(f"kv_role must be kv_producer, kv_consumer or kv_both, not {role!r}")
    extra = cfg.get("kv_connector_extra_config") or {}
    if not isinstance(extra, dict):
        raise PDConfigError("kv_connector_extra_config must be a JSON object")
    link_name, link_value = parse_link(link or str(extra.get("link", "rdma")))
    timeout = timeout_s
    if timeout is None and env and env.get("VLLM_NIXL_ABORT_REQUEST_TIMEOUT"):
        timeout = float(env["VLLM_NIXL_ABORT_REQUEST_TIMEOUT"])
    if timeout is None:
        timeout = float(extra.get("abort_request_timeout", ABORT_TIMEOUT_S))
    if timeout <= 0:
        raise PDConfigError("the KV transfer time-out must be positive")
    policy = str(cfg.get("kv_load_failure_policy", "fail"))
    if policy not in ("fail", "recompute"):
        raise PDConfigError("kv_load_failure_policy must be 'fail' or 'recompute'")
    kw: dict[str, Any] = {}
    if cfg.get("engine_id"):
        kw["engine_id"] = str(cfg["engine_id"])
    return KVTransferConfig(
        connector=str(cfg.get("kv_connector") or "NixlConnector"),
        role=role,
        link=link_value,
        link_name=link_name,
        timeout_s=timeout,
        load_failure_policy=policy,
        **kw,
    )


def transfer_seconds(tokens: int, kv_bytes_per_token: float, tp: int, link: Link) -> float:
    """Time to move ``tokens`` of KV: each TP rank sends its share over its own link."""
    if tokens <= 0:
        return 0.0
    return link.latency_s + tokens * kv_bytes_per_token / max(1, tp) / link.bandwidth


# -- request parameters -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RemotePrefill:
    """A decode request's params: where its prompt's KV waits."""

    engine_id: str
    request_id: str
    block_ids: tuple[int, ...]
    host: str
    port: int


def wants_remote_decode(params: Any) -> bool:
    return isinstance(params, dict) and params.get("do_remote_decode") is True


def remote_prefill(params: Any) -> RemotePrefill | None:
    """The decode side of ``kv_transfer_params``; ``None`` when there is nothing to pull."""
    if not isinstance(params, dict) or params.get("do_remote_prefill") is not True:
        return None
    blocks = params.get("remote_block_ids") or []
    try:
        return RemotePrefill(
            engine_id=str(params.get("remote_engine_id") or ""),
            request_id=str(params.get("remote_request_id") or ""),
            block_ids=tuple(int(b) for b in blocks),
            host=str(params.get("remote_host") or ""),
            port=int(params.get("remote_port") or 0),
        )
    except (TypeError, ValueError):
        return None


def producer_params(
    cfg: KVTransferConfig, request_id: str, blocks: list[int], host: str, port: int, tp: int
) -> dict[str, Any]:
    """What the prefill answer carries (``NixlConnector.request_finished``)."""
    return {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_block_ids": blocks,
        "remote_engine_id": cfg.engine_id,
        "remote_request_id": request_id,
        "remote_host": host,
        "remote_port": port,
        "tp_size": tp,
    }


# -- the prefill side: blocks held for a decode engine -----------------------------------
@dataclass(slots=True)
class Held:
    blocks: list[int]
    tokens: int
    expires: float


class HeldKV:
    """Blocks kept for remote decode, by request id, until read or expired (bounded)."""

    def __init__(self, timeout_s: float, max_entries: int = MAX_HELD) -> None:
        self.timeout_s = timeout_s
        self.max_entries = max_entries
        self._held: OrderedDict[str, Held] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, request_id: str, blocks: list[int], tokens: int, now: float) -> list[Held]:
        """Keep ``blocks``; returns entries pushed out (expired or over the bound)."""
        out = self.expire(now)
        old = self._held.pop(request_id, None)
        if old is not None:
            out.append(old)
        self._held[request_id] = Held(blocks, tokens, now + self.timeout_s)
        while len(self._held) > self.max_entries:
            out.append(self._held.popitem(last=False)[1])
        return out

    def take(self, request_id: str, block_ids: tuple[int, ...], now: float) -> Held | None:
        """A decode engine read these blocks: hand them over (``None``: not here)."""
        h = self._held.get(request_id)
        if h is None or h.expires <= now or tuple(h.blocks) != block_ids:
            return None
        del self._held[request_id]
        return h

    def expire(self, now: float) -> list[Held]:
        out = []
        while self._held:
            rid, h = next(iter(self._held.items()))
            if h.expires > now:
                break
            out.append(self._held.pop(rid))
        return out

    def __repr__(self) -> str:
        return f"<HeldKV {len(self._held)} requests, timeout={self.timeout_s:g}s>"


# -- the decode side: pulling the KV -----------------------------------------------------
async def pull_once(remote: RemotePrefill, timeout_s: float) -> int | None:
    """Ask the prefill engine for the blocks; the tokens they hold, or ``None``."""
    body = orjson.dumps(
        {
            "engine_id": remote.engine_id,
            "request_id": remote.request_id,
            "block_ids": list(remote.block_ids),
        }
    )
    head = (
        f"POST /sim/kv/pull HTTP/1.1\r\nHost: {remote.host}:{remote.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(remote.host, remote.port)
            try:
                writer.write(head + body)
                await writer.drain()
                raw = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None
    status_line, _, rest = raw.partition(b"\r\n")
    if b" 200 " not in status_line + b" ":
        return None
    try:
        tokens = orjson.loads(rest.partition(b"\r\n\r\n")[2]).get("tokens")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return tokens if isinstance(tokens, int) else None


async def pull(remote: RemotePrefill, timeout_s: float) -> int | None:
    """Retry ``pull_once`` (with backoff) until the KV arrives or ``timeout_s`` passes."""
    if not remote.block_ids:
        return 0  # a prompt shorter than a block: nothing to pull (vLLM skips the read)
    if not remote.host or not remote.port:
        await asyncio.sleep(timeout_s)  # nowhere to pull from: the request waits it out
        return None
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        got = await pull_once(remote, min(left, 5.0))
        if got is not None:
            return got
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 1.0)


__all__ = [
    "ABORT_TIMEOUT_S",
    "LINKS",
    "Held",
    "HeldKV",
    "KVTransferConfig",
    "Link",
    "PDConfigError",
    "RemotePrefill",
    "kv_transfer_config",
    "parse_link",
    "producer_params",
    "pull",
    "remote_prefill",
    "transfer_seconds",
    "wants_remote_decode",
]
