"""The supervisor's Prometheus metrics, read at scrape time from its latest state.

GPU series (``gpu`` label = NVML index), from the last sample (taken every few seconds):

    gantry_gpu_info{gpu,name,uuid,compute_capability}  1
    gantry_gpu_memory_used_bytes / gantry_gpu_memory_total_bytes
    gantry_gpu_utilization_ratio        0..1
    gantry_gpu_temperature_celsius
    gantry_gpu_power_watts
    gantry_gpu_ecc_errors_total         uncorrected, since the driver loaded
    gantry_gpu_throttle_reason{reason}  1 while NVML reports the reason, else 0

Engine series (``engine`` label = engine name):

    gantry_engine_state{state}          1 for the current state, 0 for the others
    gantry_engine_restarts_total / gantry_engine_oom_restarts_total
    gantry_engine_warmup_ttft_seconds{prompt_tokens}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gantry.supervisor.gpus import THROTTLE_REASONS, GpuDevice, GpuSample
from gantry.supervisor.runner import EngineState, EngineStatus

Snapshot = Callable[[], tuple[Sequence[GpuDevice], Mapping[int, GpuSample], Sequence[EngineStatus]]]


class SupervisorCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        devices, samples, engines = self._snapshot()
        yield from _gpu_metrics(devices, samples)
        yield from _engine_metrics(engines)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _gpu_metrics(
    devices: Sequence[GpuDevice], samples: Mapping[int, GpuSample]
) -> Iterator[Metric]:
    info = _gauge("gantry_gpu_info", "GPUs found.", ["gpu", "name", "uuid", "compute_capability"])
    used = _gauge("gantry_gpu_memory_used_bytes", "GPU memory in use.", ["gpu"])
    total = _gauge("gantry_gpu_memory_total_bytes", "GPU memory.", ["gpu"])
    util = _gauge("gantry_gpu_utilization_ratio", "GPU busy share, 0..1.", ["gpu"])
    temp = _gauge("gantry_gpu_temperature_celsius", "GPU temperature.", ["gpu"])
    power = _gauge("gantry_gpu_power_watts", "GPU power draw.", ["gpu"])
    ecc = CounterMetricFamily(
        "gantry_gpu_ecc_errors", "Uncorrected ECC errors since the driver loaded.", labels=["gpu"]
    )
    throttle = _gauge(
        "gantry_gpu_throttle_reason",
        "1 while the GPU's clocks are held back for reason.",
        ["gpu", "reason"],
    )
    for d in devices:
        g = str(d.index)
        cc = f"{d.compute_capability[0]}.{d.compute_capability[1]}"
        info.add_metric([g, d.name, d.uuid, cc], 1)
        s = samples.get(d.index)
        if s is None:
            continue
        used.add_metric([g], s.memory_used)
        total.add_metric([g], s.memory_total)
        for family, value in ((util, s.utilization), (temp, s.temperature_c), (power, s.power_w)):
            if value is not None:
                family.add_metric([g], value)
        if s.ecc_errors is not None:
            ecc.add_metric([g], s.ecc_errors)
        for reason in THROTTLE_REASONS.values():
            throttle.add_metric([g, reason], 1 if reason in s.throttle_reasons else 0)
    yield from (info, used, total, util, temp, power, ecc, throttle)


def _engine_metrics(engines: Sequence[EngineStatus]) -> Iterator[Metric]:
    state = _gauge("gantry_engine_state", "1 for the engine's current state.", ["engine", "state"])
    restarts = CounterMetricFamily(
        "gantry_engine_restarts", "Engine restarts after a failure.", labels=["engine"]
    )
    ooms = CounterMetricFamily(
        "gantry_engine_oom_restarts",
        "Restarts with smaller arguments after running out of GPU memory.",
        labels=["engine"],
    )
    ttft = _gauge(
        "gantry_engine_warmup_ttft_seconds",
        "Time to first token of the last warm-up, by prompt size.",
        ["engine", "prompt_tokens"],
    )
    for e in engines:
        for s in EngineState:
            state.add_metric([e.name, s.value], 1 if e.state is s else 0)
        restarts.add_metric([e.name], e.restarts)
        ooms.add_metric([e.name], e.oom_restarts)
        for n, t in e.ttft:
            ttft.add_metric([e.name, str(n)], t)
    yield from (state, restarts, ooms, ttft)


def registry_for(snapshot: Snapshot) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SupervisorCollector(snapshot))
    return reg


__all__ = ["SupervisorCollector", "registry_for"]
