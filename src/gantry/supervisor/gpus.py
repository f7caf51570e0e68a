"""GPUs: the per-GPU table, what a machine has, and the ``GpuSource`` seam in front of NVML.

The table is the simulator's (``gantry.sim.profiles.GPUS``: memory, dense bf16/fp16
FLOPs, memory bandwidth, FP8, compute capability), so the simulator, the supervisor and
the planner read the same figures. A detected device is matched to a table entry by its
NVML name (and memory, for the two A100s); the derivation then uses the memory NVML
reports, which is what the device really has.

``GpuSource`` is what the rest of the supervisor sees: ``devices()``, ``sample(i)``,
``links()``. ``gantry.supervisor.nvml`` implements it on the real library,
``gantry.supervisor.recorded.RecordedGpus`` on recorded answers (tests, ``--gpu-info``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from gantry.errors import ConfigError, GpuUnavailable
from gantry.sim.profiles import GPUS, GiB, GPUProfile, gpu_profile

GPU_TABLE: dict[str, GPUProfile] = GPUS

# NVML's clock event ("throttle") reason bits, nvmlClocksEventReason*.
THROTTLE_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

# NVML device names → table entries. Order matters: the first match wins.
_NAME_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), name)
    for p, name in (
        (r"\bH200\b", "H200"),
        (r"\bH100\b", "H100-80GB"),
        (r"\bA100\b.*\b80\s*GB\b", "A100-80GB"),
        (r"\bA100\b", "A100-40GB"),  # 40GB, or an 80GB one whose name hides it (memory)
        (r"\bA10G\b", "A10G"),
        (r"\bA40\b", "A40"),
        (r"\bA4000\b", "A4000"),
        (r"\bL4\b", "L4"),
        (r"\bT4\b", "T4"),
    )
)


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """One GPU as NVML describes it."""

    index: int
    name: str
    memory_total: int  # bytes
    compute_capability: tuple[int, int]
    uuid: str = ""
    pci_bus_id: str = ""

    @property
    def memory_gib(self) -> float:
        return self.memory_total / GiB


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One reading of a GPU's live state (NVML fields it cannot give are ``None``)."""

    index: int
    memory_used: int
    memory_total: int
    utilization: float | None = None  # 0..1 over NVML's last sample period
    temperature_c: float | None = None
    power_w: float | None = None
    ecc_errors: int | None = None  # uncorrected, volatile (since the driver loaded)
    throttle_reasons: tuple[str, ...] = ()

    @property
    def memory_free(self) -> int:
        return max(0, self.memory_total - self.memory_used)


@dataclass(frozen=True, slots=True)
class GpuLink:
    """How two GPUs reach each other: ``nvlink`` (with ``count`` links) or a PCIe path
    (``pcie-switch``, ``pcie-host-bridge``, ``numa-node``, ``system``: NVML's topology
    levels, nearest first)."""

    a: int
    b: int
    kind: str
    count: int = 0


class GpuSource(Protocol):
    def devices(self) -> tuple[GpuDevice, ...]: ...

    def sample(self, index: int) -> GpuSample: ...

    def links(self) -> tuple[GpuLink, ...]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Detection:
    """What was found: devices (maybe none) and, when there are none, why."""

    devices: tuple[GpuDevice, ...]
    links: tuple[GpuLink, ...] = ()
    reason: str | None = None  # why no GPU can be used; None when there are devices
    driver: str | None = None
    source: GpuSource | None = None

    @property
    def found(self) -> bool:
        return bool(self.devices)


def throttle_names(mask: int) -> tuple[str, ...]:
    return tuple(name for bit, name in THROTTLE_REASONS.items() if mask & bit)


def table_entry(name: str) -> GPUProfile:
    """The table entry for ``name`` (``H100``, ``a100-40gb``, ...); one-line error if none."""
    try:
        return gpu_profile(name)
    except KeyError:
        raise ConfigError(f"unknown GPU {name!r}; known: {', '.join(GPU_TABLE)}") from None


def match_device(device: GpuDevice) -> GPUProfile | None:
    """The table entry for a detected device, or ``None`` for a GPU the table lacks."""
    for pattern, name in _NAME_PATTERNS:
        if pattern.search(device.name):
            if name == "A100-40GB" and device.memory_total > 60 * GiB:
                name = "A100-80GB"
            return GPU_TABLE[name]
    return None


def device_profile(device: GpuDevice) -> GPUProfile:
    """What the derivation uses for a device: its table entry with the memory NVML
    reports, or, for a GPU the table lacks, NVML's memory and compute capability alone
    (no FLOPs or bandwidth: it cannot be simulated)."""
    entry = match_device(device)
    if entry is None:
        cc = device.compute_capability
        return GPUProfile(
            device.name, device.memory_total, 0.0, 0.0, fp8=cc >= (8, 9), compute_capability=cc
        )
    return replace(entry, memory_bytes=device.memory_total)


def parse_gpu_list(text: str) -> tuple[int, ...]:
    """``0,1,2`` → (0, 1, 2); one-line error for anything else."""
    try:
        ids = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--gpus takes GPU indices like 0,1,2, not {text!r}") from None
    if any(i < 0 for i in ids):
        raise ConfigError(f"--gpus takes GPU indices like 0,1,2, not {text!r}")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--gpus lists a GPU twice: {text}")
    return ids


def detect(open_source: Callable[[], GpuSource] | None = None) -> Detection:
    """Ask NVML (or ``open_source``) what GPUs there are. Never raises for "no GPU": the
    answer then has no devices and a one-line ``reason``."""
    if open_source is None:
        from gantry.supervisor.nvml import open_nvml

        open_source = open_nvml
    try:
        source = open_source()
    except GpuUnavailable as exc:
        return Detection((), reason=str(exc))
    devices = source.devices()
    if not devices:
        source.close()
        return Detection((), reason="NVML found no GPU")
    driver = getattr(source, "driver", None)
    return Detection(devices, source.links(), None, driver, source)


__all__ = [
    "GPU_TABLE",
    "THROTTLE_REASONS",
    "Detection",
    "GpuDevice",
    "GpuLink",
    "GpuSample",
    "GpuSource",
    "detect",
    "device_profile",
    "match_device",
    "parse_gpu_list",
    "table_entry",
    "throttle_names",
]
