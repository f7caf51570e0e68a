"""The real NVML behind ``GpuSource`` (``pip install 'gantry[gpu]'`` for ``nvidia-ml-py``).

``pynvml`` is imported here only, when GPUs are asked for. Its errors are translated at
this boundary: a missing library, driver or device becomes ``GpuUnavailable`` with one
line saying which; a field a device does not support (ECC on a consumer card, power on
some vGPUs) reads as ``None``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from gantry.errors import GpuUnavailable
from gantry.supervisor.gpus import GpuDevice, GpuLink, GpuSample, throttle_names

T = TypeVar("T")

# nvmlDeviceGetTopologyCommonAncestor levels, nearest first.
_TOPOLOGY = {
    0: "same-board",  # NVML_TOPOLOGY_INTERNAL (e.g. the two GPUs of a K80)
    10: "pcie-switch",  # SINGLE
    20: "pcie-switch",  # MULTIPLE
    30: "pcie-host-bridge",  # HOSTBRIDGE
    40: "numa-node",  # NODE
    50: "system",  # SYSTEM (across CPU sockets)
}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlGpus:
    """A ``GpuSource`` over an initialised NVML; ``close()`` shuts NVML down."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._lock = threading.Lock()  # samples are taken from a worker thread
        count = nvml.nvmlDeviceGetCount()
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self.driver = self._optional(lambda: _text(nvml.nvmlSystemGetDriverVersion()))
        self._devices = tuple(self._device(i, h) for i, h in enumerate(self._handles))

    def _optional(self, call: Callable[[], T]) -> T | None:
        try:
            return call()
        except self._nvml.NVMLError:
            return None

    def _device(self, index: int, h: Any) -> GpuDevice:
        n = self._nvml
        mem = n.nvmlDeviceGetMemoryInfo(h)
        cc = self._optional(lambda: n.nvmlDeviceGetCudaComputeCapability(h)) or (0, 0)
        pci = self._optional(lambda: _text(n.nvmlDeviceGetPciInfo(h).busId)) or ""
        return GpuDevice(
            index=index,
            name=_text(n.nvmlDeviceGetName(h)),
            memory_total=int(mem.total),
            compute_capability=(int(cc[0]), int(cc[1])),
            uuid=self._optional(lambda: _text(n.nvmlDeviceGetUUID(h))) or "",
            pci_bus_id=pci,
        )

    def devices(self) -> tuple[GpuDevice, ...]:
        return self._devices

    def sample(self, index: int) -> GpuSample:
        n, h = self._nvml, self._handles[index]
        with self._lock:
            mem = n.nvmlDeviceGetMemoryInfo(h)
            util = self._optional(lambda: n.nvmlDeviceGetUtilizationRates(h).gpu)
            temp = self._optional(lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))
            power = self._optional(lambda: n.nvmlDeviceGetPowerUsage(h))  # milliwatts
            ecc = self._optional(
                lambda: n.nvmlDeviceGetTotalEccErrors(
                    h, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC
                )
            )
            reasons = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None)
            reasons = reasons or n.nvmlDeviceGetCurrentClocksThrottleReasons
            mask = self._optional(lambda: reasons(h)) or 0
        return GpuSample(
            index=index,
            memory_used=int(mem.used),
            memory_total=int(mem.total),
            utilization=None if util is None else util / 100,
            temperature_c=None if temp is None else float(temp),
            power_w=None if power is None else power / 1000,
            ecc_errors=None if ecc is None else int(ecc),
            throttle_reasons=throttle_names(int(mask)),
        )

    def links(self) -> tuple[GpuLink, ...]:
        n = self._nvml
        by_bus = {d.pci_bus_id.lower(): d.index for d in self._devices if d.pci_bus_id}
        nvlinks: dict[tuple[int, int], int] = {}
        for d in self._devices:
            for link in range(int(getattr(n, "NVML_NVLINK_MAX_LINKS", 18))):
                peer = by_bus.get((self._nvlink_peer(d.index, link) or "").lower())
                if peer is not None and peer > d.index:
                    nvlinks[(d.index, peer)] = nvlinks.get((d.index, peer), 0) + 1
        out = []
        for a in self._devices:
            for b in self._devices[a.index + 1 :]:
                if (a.index, b.index) in nvlinks:
                    out.append(GpuLink(a.index, b.index, "nvlink", nvlinks[(a.index, b.index)]))
                    continue
                level = self._level(a.index, b.index)
                if level is not None:
                    out.append(GpuLink(a.index, b.index, _TOPOLOGY.get(level, "system")))
        return tuple(out)

    def _nvlink_peer(self, index: int, link: int) -> str | None:
        """The PCI bus id at the other end of an active NVLink, or None."""
        n, h = self._nvml, self._handles[index]
        try:
            if n.nvmlDeviceGetNvLinkState(h, link) != n.NVML_FEATURE_ENABLED:
                return None
            return _text(n.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId)
        except n.NVMLError:
            return None

    def _level(self, a: int, b: int) -> int | None:
        n = self._nvml
        try:
            return int(n.nvmlDeviceGetTopologyCommonAncestor(self._handles[a], self._handles[b]))
        except n.NVMLError:
            return None

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


def open_nvml() -> NvmlGpus:
    """Initialise NVML; ``GpuUnavailable`` (one line) when it cannot be used here."""
    try:
        import pynvml
    except ImportError:
        raise GpuUnavailable(
            "NVML is not installed (pip install 'gantry[gpu]' for nvidia-ml-py)"
        ) from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise GpuUnavailable(f"NVML cannot start: {_text(exc)} (no NVIDIA driver?)") from None
    try:
        return NvmlGpus(pynvml)
    except pynvml.NVMLError as exc:
        pynvml.nvmlShutdown()
        raise GpuUnavailable(f"NVML cannot list GPUs: {_text(exc)}") from None


__all__ = ["NvmlGpus", "open_nvml"]
