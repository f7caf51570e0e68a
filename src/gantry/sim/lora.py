"""LoRA adapters in the simulated engine, as vLLM 0.33 serves them.

- ``--enable-lora``, ``--max-loras`` (adapters in one batch, default 1),
  ``--max-lora-rank`` (default 16) and ``--lora-modules`` (``name=path`` or vLLM's
  JSON form ``{"name": ..., "path": ..., "base_model_name": ...}``).
- ``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` exist only with
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` set, as in vLLM (read once, at start-up); their
  answers and errors are vLLM's (``entrypoints/openai/serving_models.py``).
- Loaded adapters are listed in ``/v1/models`` with ``parent`` = the base model.
- Cost: vLLM sizes its GPU LoRA buffers for ``max_loras`` adapters of
  ``max_lora_rank`` when it starts, which comes out of the KV cache
  (``reserve_bytes``); a step with adapters runs the LoRA kernels
  (``gantry.sim.latency``); an adapter that is not in one of the ``max_loras`` GPU
  slots is copied in first (``LoraSlots``, least recently used out).
- The scheduler admits a waiting request only if its adapter is already in the batch
  or fewer than ``max_loras`` adapters are (``fits``), as vLLM's v1 scheduler does.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

from gantry.sim.profiles import ModelProfile
from gantry.sim.validate import VLLMError

MAX_ADAPTERS = 4096  # registry bound (vLLM's list is unbounded); beyond it loads are refused
PCIE_BYTES_PER_S = 25e9  # host-to-device copy of an adapter into a GPU slot (PCIe 4 x16)


class LoraConfigError(ValueError):
    """A ``--lora-modules`` value that cannot be read (one line)."""


@dataclass(frozen=True, slots=True)
class LoraModule:
    name: str
    path: str
    base_model_name: str | None = None


@dataclass(frozen=True, slots=True)
class LoraSettings:
    enabled: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    modules: tuple[LoraModule, ...] = ()
    runtime_updating: bool = False  # VLLM_ALLOW_RUNTIME_LORA_UPDATING


def parse_modules(values: Iterable[str]) -> tuple[LoraModule, ...]:
    """vLLM's ``--lora-modules``: ``name=path`` or a JSON object per value."""
    out = []
    for item in values:
        item = item.strip()
        if item.startswith("{"):
            try:
                d = json.loads(item)
                out.append(LoraModule(str(d["name"]), str(d["path"]), d.get("base_model_name")))
            except (ValueError, KeyError, TypeError):
                raise LoraConfigError(f"Invalid JSON format for --lora-modules: {item}") from None
            continue
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise LoraConfigError(f"Invalid format for --lora-modules: {item}")
        out.append(LoraModule(name, path))
    return tuple(out)


def runtime_updating(env: dict[str, str] | os._Environ[str]) -> bool:
    """vLLM reads VLLM_ALLOW_RUNTIME_LORA_UPDATING as a boolean ("1" or "true")."""
    return env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").strip().lower() in ("1", "true")


def check(s: LoraSettings) -> None:
    """Refuse settings vLLM refuses (``LoRAConfig`` checks), in one line."""
    if not s.enabled:
        if s.modules:
            raise LoraConfigError("--lora-modules needs --enable-lora")
        return
    if s.max_lora_rank not in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        raise LoraConfigError(
            f"max_lora_rank ({s.max_lora_rank}) must be one of "
            "(1, 8, 16, 32, 64, 128, 256, 320, 512)."
        )
    if s.max_loras < 1:
        raise LoraConfigError(f"max_loras ({s.max_loras}) must be >= 1.")


def adapter_params(model: ModelProfile, rank: int) -> int:
    """Parameters of one adapter of ``rank`` on every linear layer (qkv, o, gate_up, down)."""
    h, d, i = model.hidden_size, model.head_dim, model.intermediate_size
    in_out = 4 * h + (2 * model.num_heads + 2 * model.num_kv_heads) * d + 3 * i
    return rank * in_out * model.num_layers


def reserve_bytes(s: LoraSettings, model: ModelProfile, tp: int) -> float:
    """GPU memory vLLM sets aside for ``max_loras`` adapter slots (per GPU, bf16)."""
    if not s.enabled:
        return 0.0
    return s.max_loras * adapter_params(model, s.max_lora_rank) * 2.0 / max(1, tp)


def fits(batch_loras: set[str], lora: str | None, max_loras: int) -> bool:
    """May a request with ``lora`` join a batch already holding ``batch_loras``?"""
    return lora is None or lora in batch_loras or len(batch_loras) < max_loras


@dataclass(frozen=True, slots=True)
class Adapter:
    name: str
    int_id: int
    path: str
    parent: str


class LoraRegistry:
    """The adapters one engine serves: ``--lora-modules`` plus runtime loads."""

    def __init__(self, settings: LoraSettings, base_names: Sequence[str]) -> None:
        self.settings = settings
        self.base = list(base_names)
        self._adapters: dict[str, Adapter] = {}
        self._next_id = 0
        for m in settings.modules:
            self.load(m.name, m.path, base_model_name=m.base_model_name)

    def get(self, name: str) -> Adapter | None:
        return self._adapters.get(name)

    def adapters(self) -> list[Adapter]:
        return list(self._adapters.values())

    def load(
        self,
        name: str,
        path: str,
        *,
        load_inplace: bool = False,
        base_model_name: str | None = None,
    ) -> str:
        if not name or not path:
            raise VLLMError(
                400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput"
            )
        if name in self._adapters and not load_inplace:
            raise VLLMError(
                400,
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
                "InvalidUserInput",
            )
        if not self.settings.enabled:
            raise VLLMError(
                400, "LoRA is not enabled. Use --enable-lora to enable LoRA.", "BadRequestError"
            )
        self._check_path(name, path)
        if name not in self._adapters and len(self._adapters) >= MAX_ADAPTERS:
            raise VLLMError(
                400, f"At most {MAX_ADAPTERS} LoRA adapters can be registered.", "BadRequestError"
            )
        self._next_id += 1
        parent = base_model_name if base_model_name in self.base else self.base[0]
        self._adapters[name] = Adapter(name, self._next_id, path, parent)
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, name: str | None, int_id: int | None = None) -> str:
        if not name and not int_id:
            raise VLLMError(
                400,
                "either 'lora_name' and 'lora_int_id' needs to be provided.",
                "InvalidUserInput",
            )
        if not name or name not in self._adapters:
            raise VLLMError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        del self._adapters[name]
        return f"Success: LoRA adapter '{name}' removed successfully."

    def _check_path(self, name: str, path: str) -> None:
        """A local path must exist (vLLM's worker fails to load it otherwise); a rank
        in its adapter_config.json must fit ``--max-lora-rank``. Other paths (Hugging
        Face ids) are taken as given."""
        if not path.startswith(("/", "./", "../")):
            return
        cfg = os.path.join(path, "adapter_config.json")
        if not os.path.isfile(cfg):
            raise VLLMError(
                404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError"
            )
        try:
            with open(cfg, encoding="utf-8") as f:
                rank = int(json.load(f).get("r", 0))
        except (OSError, ValueError, AttributeError):
            return
        if rank > self.settings.max_lora_rank:
            raise VLLMError(
                400,
                f"LoRA rank {rank} is greater than max_lora_rank {self.settings.max_lora_rank}.",
                "BadRequestError",
            )

    def __repr__(self) -> str:
        return f"<LoraRegistry {sorted(self._adapters)}>"


class LoraSlots:
    """The ``max_loras`` GPU slots: adapters a step uses are brought in, least recently
    used out. ``use`` answers how many had to be copied in."""

    def __init__(self, max_loras: int) -> None:
        self.max_loras = max_loras
        self._lru: OrderedDict[str, None] = OrderedDict()

    def use(self, loras: Iterable[str]) -> int:
        copied = 0
        for name in loras:
            if name in self._lru:
                self._lru.move_to_end(name)
                continue
            copied += 1
            self._lru[name] = None
            while len(self._lru) > self.max_loras:
                self._lru.popitem(last=False)
        return copied

    def drop(self, name: str) -> None:
        self._lru.pop(name, None)


class LoraMetrics:
    """``vllm:lora_requests_info``: one series, its value the time of the last step,
    its labels the adapters of running and waiting requests (comma-separated).
    vLLM keeps every label set it ever set; this keeps the latest only (bounded)."""

    def __init__(self, registry: CollectorRegistry, max_loras: int) -> None:
        self.max_lora = str(max_loras)
        self.gauge = Gauge(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
            registry=registry,
        )
        self._last: tuple[str, str] | None = None
        self.update([], [])

    def update(self, running: Iterable[str | None], waiting: Iterable[str | None]) -> None:
        run = ",".join(dict.fromkeys(n for n in running if n))
        wait = ",".join(dict.fromkeys(n for n in waiting if n))
        if self._last != (run, wait):
            self.gauge.clear()
            self._last = (run, wait)
        self.gauge.labels(self.max_lora, wait, run).set_to_current_time()


__all__ = [
    "Adapter",
    "LoraConfigError",
    "LoraMetrics",
    "LoraModule",
    "LoraRegistry",
    "LoraSettings",
    "LoraSlots",
    "adapter_params",
    "check",
    "fits",
    "parse_modules",
    "reserve_bytes",
    "runtime_updating",
]
