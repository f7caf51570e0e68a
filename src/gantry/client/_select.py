"""Which mode to run in: ``choose_mode`` is pure; ``create_client`` probes and builds.

``auto`` picks, in order: in-process vLLM (vLLM installed, a GPU present and a model
named), HTTP to the given URL, the simulator in process. The reason is logged and kept
on the client (``client.reason``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gantry.client._backend import Backend
from gantry.client._client import AsyncClient
from gantry.client._errors import ModeUnavailableError
from gantry.client._retry import RetryPolicy
from gantry.client._types import Options

log = logging.getLogger("gantry.client")

Mode = Literal["auto", "vllm", "http", "sim"]


@dataclass(frozen=True, slots=True)
class Probe:
    """What this machine has, as ``choose_mode`` needs it."""

    vllm: bool
    vllm_reason: str
    gpus: int
    gpu_reason: str


@dataclass(frozen=True, slots=True)
class ModeChoice:
    mode: Literal["vllm", "http", "sim"]
    reason: str


def choose_mode(requested: Mode, *, url: str | None, model: str | None, probe: Probe) -> ModeChoice:
    if requested == "http":
        if not url:
            raise ModeUnavailableError("mode='http' needs url=")
        return ModeChoice("http", f"HTTP to {url}, as asked")
    if requested == "sim":
        return ModeChoice("sim", "the simulator in process, as asked")
    vllm_ok = probe.vllm and probe.gpus > 0 and bool(model)
    why_not = (
        probe.vllm_reason
        if not probe.vllm
        else probe.gpu_reason
        if probe.gpus == 0
        else "no model named for vLLM to load"
    )
    if requested == "vllm":
        if not vllm_ok:
            raise ModeUnavailableError(f"in-process vLLM cannot run here: {why_not}")
        return ModeChoice("vllm", f"vLLM in process, as asked ({probe.gpus} GPU(s))")
    if vllm_ok:
        return ModeChoice("vllm", f"vLLM is installed and {probe.gpus} GPU(s) found")
    if url:
        return ModeChoice("http", f"in-process vLLM unavailable ({why_not}); HTTP to {url}")
    return ModeChoice(
        "sim", f"in-process vLLM unavailable ({why_not}) and no URL given; the simulator"
    )


def probe_machine(requested: Mode) -> Probe:
    """Ask only what the choice needs: GPUs are looked for only when vLLM is there."""
    if requested in ("http", "sim"):
        return Probe(False, "not asked", 0, "not asked")
    from gantry.client._vllm import vllm_available

    ok, why = vllm_available()
    if not ok:
        return Probe(False, why, 0, "not probed")
    from gantry.client._gpu import GpuMonitor

    gpus, reason = GpuMonitor().count()
    return Probe(True, why, gpus, reason)


def create_client(
    url: str | None = None,
    *,
    mode: Mode = "auto",
    model: str | None = None,
    api_key: str | None = None,
    defaults: Options | None = None,
    retry: RetryPolicy | None = None,
    tokenizer: str | Path | None = None,
    check_context: bool = True,
    batch_concurrency: int = 16,
    timeout_s: float = 600.0,
    sim: Any = None,
    vllm_args: dict[str, Any] | None = None,
    probe: Probe | None = None,
) -> AsyncClient:
    """An ``AsyncClient`` in the best mode available (see the module docstring).

    ``sim`` is a ``gantry.sim.SimSettings`` for the simulator, ``vllm_args`` are
    ``AsyncEngineArgs`` for in-process vLLM, ``batch_concurrency`` bounds HTTP batches.
    """
    choice = choose_mode(mode, url=url, model=model, probe=probe or probe_machine(mode))
    log.info("gantry client mode: %s (%s)", choice.mode, choice.reason)
    backend: Backend
    if choice.mode == "vllm":
        from gantry.client._vllm import VllmBackend

        assert model is not None
        backend = VllmBackend(model, vllm_args)
    elif choice.mode == "http":
        from gantry.client._http import HttpBackend

        assert url is not None
        backend = HttpBackend(
            url, api_key=api_key, timeout_s=timeout_s, batch_concurrency=batch_concurrency
        )
    else:
        from gantry.client._sim import SimBackend
        from gantry.sim.settings import SimSettings

        if sim is None:
            sim = SimSettings(served_model_names=(model,) if model else ())
        backend = SimBackend(sim)
    return AsyncClient(
        backend,
        model=model,
        defaults=defaults,
        retry=retry,
        tokenizer=tokenizer,
        check_context=check_context,
        reason=choice.reason,
    )


__all__ = ["Mode", "ModeChoice", "Probe", "choose_mode", "create_client", "probe_machine"]
