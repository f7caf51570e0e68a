"""From a ``LaunchSpec`` and what the machine has to a plan: which engines, on which GPUs,
with which command line. Pure: detection and the vLLM lookup are its inputs.

A simulated engine gets the very argv a real one would, run by ``python -m gantry.sim``
instead of ``vllm`` with the GPU profile named (``--gpu``); the argv is checked by the
simulator's parser here, so a flag it refuses fails before anything starts.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from gantry.config import EngineSpec
from gantry.errors import ConfigError, LaunchError
from gantry.sim.profiles import GPUProfile
from gantry.sim.settings import SimConfigError
from gantry.sim.vllm_cli import parse as parse_sim_argv
from gantry.supervisor.args import Derivation, EngineArgs, derive, with_args
from gantry.supervisor.cmdline import UserArgs, parse_vllm_args
from gantry.supervisor.config import LaunchSpec
from gantry.supervisor.gpus import Detection, device_profile, match_device, table_entry
from gantry.supervisor.model import ModelInfo

DEFAULT_SIM_GPU = "L4"  # as `gantry sim` and the embedded default


@dataclass(frozen=True, slots=True)
class EnginePlan:
    """One engine process: its GPUs, port, derived arguments and command line."""

    name: str
    gpus: tuple[int, ...]
    host: str
    port: int
    derivation: Derivation
    served_name: str
    head: tuple[str, ...]  # the executable and ``serve MODEL``
    tail: tuple[str, ...] = ()  # after the derived flags: the user's, the simulator's
    env: Mapping[str, str] = field(default_factory=dict)
    simulated: bool = False

    @property
    def args(self) -> EngineArgs:
        return self.derivation.args

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def argv(self) -> list[str]:
        return [
            *self.head,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--served-model-name",
            self.served_name,
            *self.args.argv(),
            *self.tail,
        ]

    def with_args(self, args: EngineArgs) -> EnginePlan:
        return replace(self, derivation=with_args(self.derivation, **_fields(args)))

    def spec(self) -> EngineSpec:
        """How the gateway reaches this engine."""
        return EngineSpec(url=self.url, name=self.name, models=(self.served_name,))


def _fields(args: EngineArgs) -> dict[str, object]:
    return {k: getattr(args, k) for k in EngineArgs.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class LaunchPlan:
    engines: tuple[EnginePlan, ...]
    simulated: bool
    reason: str | None  # why simulated (one line), None for real engines
    model: ModelInfo

    def specs(self) -> tuple[EngineSpec, ...]:
        return tuple(e.spec() for e in self.engines)


def choose_mode(spec: LaunchSpec, detection: Detection, vllm: str | None) -> str | None:
    """None for real engines, else why the simulator runs them (one line)."""
    if spec.mode == "simulate":
        return "--simulate"
    missing = detection.reason if not detection.found else None
    if missing is None and vllm is None:
        missing = f"vLLM is not installed (no {spec.vllm_bin!r} on PATH)"
    if missing is None:
        return None
    if spec.mode == "vllm":
        raise LaunchError(f"cannot run vLLM engines: {missing}")
    return missing


def plan_launch(
    spec: LaunchSpec,
    model: ModelInfo,
    detection: Detection,
    *,
    vllm: str | None,
    free: Mapping[int, int] | None = None,
) -> LaunchPlan:
    """``vllm``: the vLLM executable found, or None. ``free``: free bytes per GPU."""
    reason = choose_mode(spec, detection, vllm)
    simulated = reason is not None
    user = parse_vllm_args(spec.vllm_args)
    if "tensor_parallel_size" in user and user.get("tensor_parallel_size") != spec.tp:
        raise ConfigError("--tensor-parallel-size among the vLLM flags differs from --tp")
    gpus = _gpu_ids(spec, detection)
    if len(gpus) % spec.tp:
        raise ConfigError(f"{len(gpus)} GPU(s) cannot be split into groups of --tp {spec.tp}")
    served = user.get("served_model_name", (spec.model,))[0]
    engines = []
    for i in range(len(gpus) // spec.tp):
        group = gpus[i * spec.tp : (i + 1) * spec.tp]
        gpu = _group_profile(spec, detection, group, simulated)
        left = [free[g] for g in group if free and g in free]
        d = derive(model, gpu, tp=spec.tp, user=user, free_bytes=min(left) if left else None)
        engines.append(_engine(spec, model, user, d, i, group, served, gpu, simulated))
    return LaunchPlan(tuple(engines), simulated, reason, model)


def _gpu_ids(spec: LaunchSpec, detection: Detection) -> tuple[int, ...]:
    have = tuple(d.index for d in detection.devices)
    if spec.gpus is None:
        return have or tuple(range(spec.tp))
    if have:
        missing = [g for g in spec.gpus if g not in have]
        if missing:
            raise ConfigError(
                f"--gpus names GPU {missing[0]}, but this machine has GPU(s) "
                f"{','.join(map(str, have))}"
            )
    return spec.gpus


def _group_profile(
    spec: LaunchSpec, detection: Detection, group: tuple[int, ...], simulated: bool
) -> GPUProfile:
    """The GPU a group is derived for: the one with least memory in it (as found), or,
    simulating with none found, the table entry named (default L4)."""
    if spec.gpu_type is not None and (simulated or not detection.found):
        return table_entry(spec.gpu_type)
    if not detection.found:
        return table_entry(DEFAULT_SIM_GPU)
    devices = [detection.devices[g] for g in group]
    smallest = min(devices, key=lambda d: d.memory_total)
    if simulated and match_device(smallest) is None:
        raise ConfigError(
            f"GPU {smallest.index} ({smallest.name}) is not in the GPU table: name one to "
            "simulate with --gpu-type"
        )
    return device_profile(smallest)


def _engine(
    spec: LaunchSpec,
    model: ModelInfo,
    user: UserArgs,
    d: Derivation,
    i: int,
    group: tuple[int, ...],
    served: str,
    gpu: GPUProfile,
    simulated: bool,
) -> EnginePlan:
    env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, group))}
    if simulated:
        head: tuple[str, ...] = (sys.executable, "-m", "gantry.sim", "serve", model.vllm_model)
        sim_gpu = match_device_name(gpu)
        tail = (*user.passthrough, "--gpu", sim_gpu, *spec.sim_args)
    else:
        head = (spec.vllm_bin, "serve", model.vllm_model)
        tail = user.passthrough
    plan = EnginePlan(
        name=f"{spec.name}-{i}",
        gpus=group,
        host=spec.host,
        port=spec.port + i,
        derivation=d,
        served_name=served,
        head=head,
        tail=tuple(tail),
        env=env,
        simulated=simulated,
    )
    if simulated:
        check_sim_argv(plan)
    return plan


def match_device_name(gpu: GPUProfile) -> str:
    """The table name of a (possibly memory-adjusted) profile."""
    try:
        return table_entry(gpu.name).name
    except ConfigError:
        raise ConfigError(f"{gpu.name} is not in the GPU table: it cannot be simulated") from None


def check_sim_argv(plan: EnginePlan) -> None:
    """What the simulator would refuse, refused now, in the simulator's words."""
    try:
        parse_sim_argv(plan.argv[3:]).settings.resolve()
    except SimConfigError as exc:
        raise ConfigError(f"simulated engine: {exc}") from None


__all__ = [
    "DEFAULT_SIM_GPU",
    "EnginePlan",
    "LaunchPlan",
    "check_sim_argv",
    "choose_mode",
    "plan_launch",
]
