"""The engine core: one step of the simulated engine, with no clock of its own.

A step is: the scheduler decides the batch, the latency model gives its modelled
duration, the scheduler applies it (tokens computed, tokens sampled). ``SimEngine``
runs steps in real time on an asyncio loop (``gantry sim``); ``gantry.sim.virtual``
runs the same steps on a virtual clock (the planner and the tuner). Both share this
class, so they share the scheduler, the KV cache and the latency model exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from gantry.sim.kvcache import KVCache
from gantry.sim.latency import LatencyModel
from gantry.sim.lora import LoraSlots
from gantry.sim.scheduler import ScheduledStep, Scheduler, SchedulerConfig
from gantry.sim.sequence import SimRequest, StepOutput


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model_name: str
    max_model_len: int
    num_gpu_blocks: int
    block_size: int = 16
    scheduler: SchedulerConfig = SchedulerConfig()
    speedup: float = 1.0
    prefix_caching: bool = True


@dataclass(frozen=True, slots=True)
class CoreStep:
    """One applied step: what ran, how long the model says it took, what it produced."""

    step: ScheduledStep
    duration: float  # modelled seconds (slowdown applied, speed-up not)
    outputs: list[tuple[SimRequest, StepOutput]]


class EngineCore:
    """KV cache + scheduler + latency model; ``step()`` runs one engine iteration."""

    def __init__(self, config: EngineConfig, latency: LatencyModel) -> None:
        self.config = config
        self.latency = latency
        self.kv = KVCache(
            config.num_gpu_blocks, config.block_size, prefix_caching=config.prefix_caching
        )
        self.scheduler = Scheduler(config.scheduler, self.kv)
        self.slowdown = 1.0  # fault injection multiplies step time
        mx = config.scheduler.max_loras
        self.lora_slots = LoraSlots(mx) if mx else None  # GPU slots for LoRA adapters

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def add(self, req: SimRequest) -> None:
        self.scheduler.add(req)

    def step(self) -> CoreStep:
        step = self.scheduler.schedule()
        if self.lora_slots is not None:
            step.loras_loaded = self.lora_slots.use(step.loras())
        duration = self.latency.step_time(step.shape()) * self.slowdown
        return CoreStep(step, duration, self.scheduler.complete(step))

    def __repr__(self) -> str:
        s = self.scheduler
        return f"<EngineCore running={len(s.running)} waiting={len(s.waiting)} {self.kv!r}>"


__all__ = ["CoreStep", "EngineConfig", "EngineCore"]
