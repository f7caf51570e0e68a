"""Recorded GPU answers: a ``GpuSource`` read from JSON, and the JSON ``gantry gpus --json``
writes (the same shape, so a machine can be recorded and replayed anywhere)::

    {"driver": "550.54.15",
     "gpus": [{"index": 0, "name": "NVIDIA L4", "memory_total": 24152899584,
               "compute_capability": [8, 9], "uuid": "GPU-...", "pci_bus_id": "...",
               "samples": [{"memory_used": 0, "utilization": 0.0, "temperature_c": 34,
                            "power_w": 16.2, "ecc_errors": 0,
                            "throttle_reasons": ["gpu_idle"]}]}],
     "links": [{"a": 0, "b": 1, "kind": "nvlink", "count": 18}]}

``samples`` are answered in turn, the last one again and again (so a test can script a
GPU whose memory frees up); ``sample`` (one object) is accepted too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gantry.errors import ConfigError
from gantry.supervisor.gpus import Detection, GpuDevice, GpuLink, GpuSample


class RecordedGpus:
    """A ``GpuSource`` that answers from recorded data."""

    def __init__(self, data: dict[str, Any], *, origin: str = "recorded GPUs") -> None:
        self.origin = origin
        try:
            self._devices, self._samples = _devices(data)
            self._links = tuple(
                GpuLink(int(x["a"]), int(x["b"]), str(x["kind"]), int(x.get("count", 0)))
                for x in data.get("links", ())
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{origin}: not a GPU recording ({_what(exc)})") from None
        self.driver = data.get("driver")
        self._next = [0] * len(self._devices)

    @classmethod
    def from_file(cls, path: str | Path) -> RecordedGpus:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ConfigError(f"{path}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: not a GPU recording (expected a JSON object)")
        return cls(data, origin=str(path))

    def devices(self) -> tuple[GpuDevice, ...]:
        return self._devices

    def sample(self, index: int) -> GpuSample:
        samples = self._samples[index]
        i = self._next[index]
        self._next[index] = min(i + 1, len(samples) - 1)
        return samples[i]

    def links(self) -> tuple[GpuLink, ...]:
        return self._links

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"RecordedGpus({self.origin!r}, {len(self._devices)} GPU(s))"


def _what(exc: BaseException) -> str:
    return f"missing {exc}" if isinstance(exc, KeyError) else str(exc)


def _devices(data: dict[str, Any]) -> tuple[tuple[GpuDevice, ...], list[list[GpuSample]]]:
    devices, samples = [], []
    for i, g in enumerate(data["gpus"]):
        cc = g["compute_capability"]
        dev = GpuDevice(
            index=int(g.get("index", i)),
            name=str(g["name"]),
            memory_total=int(g["memory_total"]),
            compute_capability=(int(cc[0]), int(cc[1])),
            uuid=str(g.get("uuid", "")),
            pci_bus_id=str(g.get("pci_bus_id", "")),
        )
        if dev.index != i:
            raise ValueError(f"GPU {i} has index {dev.index}")
        raw = g.get("samples") or [g.get("sample") or {}]
        samples.append([_sample(i, dev.memory_total, s) for s in raw])
        devices.append(dev)
    return tuple(devices), samples


def _sample(index: int, total: int, s: dict[str, Any]) -> GpuSample:
    def opt(key: str, kind: type) -> Any:
        v = s.get(key)
        return None if v is None else kind(v)

    return GpuSample(
        index=index,
        memory_used=int(s.get("memory_used", 0)),
        memory_total=int(s.get("memory_total", total)),
        utilization=opt("utilization", float),
        temperature_c=opt("temperature_c", float),
        power_w=opt("power_w", float),
        ecc_errors=opt("ecc_errors", int),
        throttle_reasons=tuple(str(r) for r in s.get("throttle_reasons", ())),
    )


def recording(detection: Detection, samples: dict[int, GpuSample]) -> dict[str, Any]:
    """The JSON-able record of a detection (what ``RecordedGpus`` reads back)."""
    gpus = []
    for d in detection.devices:
        entry: dict[str, Any] = {
            "index": d.index,
            "name": d.name,
            "memory_total": d.memory_total,
            "compute_capability": list(d.compute_capability),
            "uuid": d.uuid,
            "pci_bus_id": d.pci_bus_id,
        }
        s = samples.get(d.index)
        if s is not None:
            entry["sample"] = {
                "memory_used": s.memory_used,
                "utilization": s.utilization,
                "temperature_c": s.temperature_c,
                "power_w": s.power_w,
                "ecc_errors": s.ecc_errors,
                "throttle_reasons": list(s.throttle_reasons),
            }
        gpus.append(entry)
    return {
        "driver": detection.driver,
        "gpus": gpus,
        "links": [{"a": x.a, "b": x.b, "kind": x.kind, "count": x.count} for x in detection.links],
    }


__all__ = ["RecordedGpus", "recording"]
