"""The ``gantry engine`` and ``gantry gpus`` commands (mounted by ``gantry.cli``)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gantry.console import fail
from gantry.errors import GantryError, GpuUnavailable

if TYPE_CHECKING:  # the supervisor is imported when a command runs, not to list commands
    from gantry.supervisor.args import Derivation
    from gantry.supervisor.config import LaunchSpec
    from gantry.supervisor.gpus import Detection, GpuSample
    from gantry.supervisor.launch import LaunchPlan

log = logging.getLogger("gantry.supervisor")
GiB = 1024**3

Model = Annotated[
    str, typer.Option(metavar="MODEL", help="Built-in name, HF id, checkout or config.json.")
]
Gpus = Annotated[
    str | None, typer.Option(metavar="IDS", help="GPU indices, e.g. 0,1 (default: all).")
]
Tp = Annotated[int, typer.Option("--tp", metavar="N", help="GPUs per engine (tensor parallel).")]
GpuInfo = Annotated[
    Path | None,
    typer.Option(metavar="PATH", help="Read GPUs from a `gantry gpus --json` file, not NVML."),
]
GpuType = Annotated[
    str | None,
    typer.Option(metavar="GPU", help="GPU to simulate (T4, L4, A10G, A100-40GB, H100-80GB)."),
]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _opener(gpu_info: Path | None) -> Any:
    from gantry.supervisor.recorded import RecordedGpus

    if gpu_info is None:
        return None
    source = RecordedGpus.from_file(gpu_info)  # read now: a bad file fails in one line
    return lambda: source


def engine(
    ctx: typer.Context,
    model: Model,
    gpus: Gpus = None,
    tp: Tp = 1,
    host: Annotated[str, typer.Option(metavar="HOST", help="Engines' address.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(metavar="PORT", help="First engine's port; then PORT+1, ...")
    ] = 8000,
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Simulated engines (gantry.sim), no GPU.")
    ] = False,
    gpu_type: GpuType = None,
    gpu_info: GpuInfo = None,
    status_port: Annotated[
        int, typer.Option(metavar="PORT", help="The supervisor's /health and /metrics.")
    ] = 9256,
    explain_only: Annotated[
        bool, typer.Option("--explain", help="Print the derivation of every argument; exit.")
    ] = False,
    vllm_bin: Annotated[str, typer.Option(metavar="PATH", help="The vllm executable.")] = "vllm",
    wait_gpu_memory: Annotated[
        float, typer.Option(metavar="SECONDS", help="Wait this long for free GPU memory.")
    ] = 0.0,
    speedup: Annotated[
        float, typer.Option(metavar="FACTOR", help="Simulated engines' clock speed-up.")
    ] = 1.0,
    no_warmup: Annotated[bool, typer.Option("--no-warmup", help="Ready without warm-up.")] = False,
    log_level: Annotated[str, typer.Option(metavar="LEVEL", help="debug, info, warning.")] = "info",
) -> None:
    """Start and supervise vLLM engines, one per --tp GPUs.

    Arguments are derived from the GPUs and the model's config.json; vLLM flags
    given after the options (e.g. --max-model-len 4096) are kept as given. With no
    GPU or no vLLM here, the engines are simulated.
    """
    from gantry.supervisor.config import LaunchSpec, WarmupSettings
    from gantry.supervisor.gpus import parse_gpu_list
    from gantry.supervisor.supervisor import prepare

    _setup_logging(log_level)
    try:
        spec = LaunchSpec(
            model=model,
            gpus=parse_gpu_list(gpus) if gpus else None,
            tp=tp,
            host=host,
            port=port,
            mode="simulate" if simulate else "auto",
            gpu_type=gpu_type,
            vllm_args=tuple(ctx.args),
            vllm_bin=vllm_bin,
            sim_args=("--speedup", str(speedup)) if speedup != 1.0 else (),
            wait_gpu_memory_s=wait_gpu_memory,
            warmup=WarmupSettings(enabled=not no_warmup),
        )
        plan, detection = prepare(spec, open_gpus=_opener(gpu_info))
    except GantryError as exc:
        fail(str(exc))
    except ValueError as exc:  # pydantic's, for values a flag's type let through
        fail(_first_error(exc))
    if plan.simulated:
        typer.echo(f"gantry engine: simulating ({plan.reason})", err=True)
    if explain_only:
        if detection.source is not None:
            detection.source.close()
        typer.echo(_explain_plan(plan))
        return
    code = asyncio.run(_serve(plan, spec, detection, status_port))
    raise typer.Exit(code)


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        e = errors()[0]
        msg, loc = str(e["msg"]).removeprefix("Value error, "), ".".join(map(str, e["loc"]))
        return f"{loc}: {msg}" if loc else msg
    return str(exc)


def _explain_plan(plan: LaunchPlan) -> str:
    from gantry.supervisor.args import explain

    out = []
    seen: set[tuple[Any, ...]] = set()
    for e in plan.engines:
        key = (e.derivation.gpu, e.args)
        if key not in seen:
            seen.add(key)
            out.append(explain(e.derivation))
    out.append("engines")
    for e in plan.engines:
        env = " ".join(f"{k}={v}" for k, v in e.env.items())
        out.append(f"  {e.name}: {e.url}  {env} {' '.join(e.argv)}")
    return "\n".join(out)


async def _serve(plan: LaunchPlan, spec: LaunchSpec, detection: Detection, status_port: int) -> int:
    from gantry.supervisor.supervisor import EngineSupervisor

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sup = EngineSupervisor(plan, spec, detection=detection, status_port=status_port)
    try:
        async with sup:
            for e in plan.engines:
                gpus = ",".join(map(str, e.gpus))
                log.info("%s: %s on GPU(s) %s", e.name, e.url, gpus)
            await stop.wait()
            log.info("stopping: SIGTERM to every engine, %g s grace", spec.stop_grace_s)
    except OSError as exc:  # the status port taken
        typer.echo(f"gantry: error: status port {status_port}: {exc.strerror or exc}", err=True)
        return 2
    return 0


def gpus(
    model: Annotated[
        str | None, typer.Option(metavar="MODEL", help="Also show the vLLM arguments for it.")
    ] = None,
    gpus: Gpus = None,
    tp: Tp = 1,
    gpu_type: GpuType = None,
    gpu_info: GpuInfo = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON (replayable: --gpu-info).")] = False,
) -> None:
    """List the GPUs found (NVML).

    With --model, also the vLLM arguments gantry engine would choose.
    """
    from gantry.supervisor.config import LaunchSpec
    from gantry.supervisor.gpus import detect, parse_gpu_list
    from gantry.supervisor.supervisor import prepare

    try:
        detection = detect(_opener(gpu_info))
        samples: dict[int, GpuSample] = {}
        if detection.source is not None:
            samples = {d.index: detection.source.sample(d.index) for d in detection.devices}
        plan = None
        if model is not None:
            spec = LaunchSpec(
                model=model,
                gpus=parse_gpu_list(gpus) if gpus else None,
                tp=tp,
                gpu_type=gpu_type,
                mode="auto",
            )
            plan, _ = prepare(spec, open_gpus=lambda: _Reuse(detection))
    except GantryError as exc:
        fail(str(exc))
    except ValueError as exc:
        fail(_first_error(exc))
    finally:
        if "detection" in locals() and detection.source is not None:
            detection.source.close()
    if as_json:
        typer.echo(json.dumps(_json(detection, samples, plan), indent=2))
        return
    typer.echo(_text(detection, samples, plan))


class _Reuse:
    """The detection already made, as a source for ``prepare`` (NVML opened once)."""

    def __init__(self, detection: Detection) -> None:
        self._d = detection
        if detection.source is None:
            raise GpuUnavailable(detection.reason or "no GPU")  # prepare() sees "no GPU"

    def devices(self) -> Any:
        return self._d.devices

    def sample(self, index: int) -> GpuSample:
        assert self._d.source is not None
        return self._d.source.sample(index)

    def links(self) -> Any:
        return self._d.links

    def close(self) -> None:
        pass


def _json(det: Detection, samples: dict[int, GpuSample], plan: LaunchPlan | None) -> Any:
    from gantry.supervisor.gpus import match_device
    from gantry.supervisor.recorded import recording

    out: dict[str, Any] = recording(det, samples)
    out["reason"] = det.reason
    for g, d in zip(out["gpus"], det.devices, strict=True):
        entry = match_device(d)
        g["table"] = entry.name if entry else None
    if plan is not None:
        out["simulated"] = plan.simulated
        out["engines"] = [
            {"name": e.name, "gpus": list(e.gpus), "port": e.port, "argv": e.argv}
            | _args(e.derivation)
            for e in plan.engines
        ]
    return out


def _args(d: Derivation) -> dict[str, Any]:
    args = {k: getattr(d.args, k) for k in d.args.__dataclass_fields__}
    return {"args": args, "kv_tokens": d.kv_tokens}


def _text(det: Detection, samples: dict[int, GpuSample], plan: LaunchPlan | None) -> str:
    from gantry.supervisor.gpus import device_profile, match_device

    lines = []
    if not det.found:
        lines.append(f"no GPU: {det.reason}")
    for d in det.devices:
        p = device_profile(d)
        entry = match_device(d)
        table = (
            f"table {entry.name}: {p.hbm_bandwidth / 1e9:.0f} GB/s, "
            f"{p.peak_flops / 1e12:.0f} TFLOP/s"
            if entry
            else "not in the GPU table"
        )
        line = (
            f"GPU {d.index}: {d.name}, {d.memory_gib:.1f} GiB, SM {p.sm} "
            f"(bf16 {'yes' if p.bf16 else 'no'}, fp8 {'yes' if p.fp8 else 'no'}), {table}"
        )
        s = samples.get(d.index)
        if s is not None:
            line += f"; {s.memory_used / GiB:.1f} GiB used"
            if s.temperature_c is not None:
                line += f", {s.temperature_c:.0f} C"
        lines.append(line)
    for link in det.links:
        extra = f" x{link.count}" if link.count else ""
        lines.append(f"link {link.a}-{link.b}: {link.kind}{extra}")
    if det.driver:
        lines.append(f"driver {det.driver}")
    if plan is not None:
        if plan.simulated:
            lines.append(f"simulated ({plan.reason}):")
        for e in plan.engines:
            env = " ".join(f"{k}={v}" for k, v in e.env.items())
            lines.append(f"{e.name}: {env} {' '.join(e.argv)}")
    return "\n".join(lines)


__all__ = ["engine", "gpus"]
