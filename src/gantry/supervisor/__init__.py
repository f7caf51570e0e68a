"""Engines on GPUs: detect GPUs (NVML), derive vLLM arguments from the GPUs and the
model's config.json, launch ``vllm serve`` (or the simulator) per GPU group, warm the
engines up and keep them alive.

Imported by ``gantry.cli`` and ``gantry.gateway`` only (``engines: launch:``).
"""

from gantry.supervisor.args import Derivation, EngineArgs, Step, derive, explain
from gantry.supervisor.cmdline import UserArgs, parse_vllm_args
from gantry.supervisor.config import LaunchSpec, OomSettings, RestartSettings, WarmupSettings
from gantry.supervisor.gpus import (
    GPU_TABLE,
    Detection,
    GpuDevice,
    GpuLink,
    GpuSample,
    GpuSource,
    detect,
    device_profile,
    match_device,
    table_entry,
)
from gantry.supervisor.launch import EnginePlan, LaunchPlan, plan_launch
from gantry.supervisor.memory import wait_for_free_memory
from gantry.supervisor.model import ModelInfo, load_model
from gantry.supervisor.recorded import RecordedGpus
from gantry.supervisor.runner import EngineState, EngineStatus
from gantry.supervisor.supervisor import EngineSupervisor, prepare
from gantry.supervisor.thread import SupervisorThread

__all__ = [
    "GPU_TABLE",
    "Derivation",
    "Detection",
    "EngineArgs",
    "EnginePlan",
    "EngineState",
    "EngineStatus",
    "EngineSupervisor",
    "GpuDevice",
    "GpuLink",
    "GpuSample",
    "GpuSource",
    "LaunchPlan",
    "LaunchSpec",
    "ModelInfo",
    "OomSettings",
    "RecordedGpus",
    "RestartSettings",
    "Step",
    "SupervisorThread",
    "UserArgs",
    "WarmupSettings",
    "derive",
    "detect",
    "device_profile",
    "explain",
    "load_model",
    "match_device",
    "parse_vllm_args",
    "plan_launch",
    "prepare",
    "table_entry",
    "wait_for_free_memory",
]
