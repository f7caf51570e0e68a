"""What to launch: ``LaunchSpec``, one entry of ``engines: launch:`` in gantry.yaml and
what ``gantry engine``'s flags build (``gantry.supervisor`` starts them). Frozen,
validated once at the edge."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class RestartSettings(BaseModel):
    """Backoff and crash-loop detection (see ``gantry.supervisor.policy``)."""

    model_config = _FROZEN
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    crash_loop_restarts: int = Field(default=5, ge=2)
    crash_loop_window_s: float = Field(default=300.0, gt=0)
    stable_after_s: float = Field(default=120.0, gt=0)


class OomSettings(BaseModel):
    """How far an out-of-memory restart may lower the arguments."""

    model_config = _FROZEN
    utilization_step: float = Field(default=0.05, gt=0, lt=0.5)
    utilization_floor: float = Field(default=0.5, gt=0, le=1)
    seqs_floor: int = Field(default=8, ge=1)


class WarmupSettings(BaseModel):
    """Requests of growing size before an engine is called ready."""

    model_config = _FROZEN
    enabled: bool = True
    prompt_tokens: tuple[int, ...] = (16, 256, 2048)  # capped below --max-model-len
    max_tokens: int = Field(default=8, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)


class LaunchSpec(BaseModel):
    """Engines of one model over a set of GPUs: one process per ``tp`` GPUs."""

    model_config = _FROZEN
    model: str
    gpus: tuple[int, ...] | None = None  # None: every GPU found (one, when simulating none)
    tp: int = Field(default=1, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)  # the first engine's; then port + 1, ...
    mode: Literal["auto", "vllm", "simulate"] = "auto"
    gpu_type: str | None = None  # the GPU to simulate (default: the one found, else L4)
    vllm_args: tuple[str, ...] = ()  # passed to every engine; derived values yield to them
    vllm_bin: str = "vllm"
    sim_args: tuple[str, ...] = ()  # simulator-only flags: --speedup, --profile, --slow-start
    name: str = "engine"  # engines are called name-0, name-1, ...
    load_timeout_s: float = Field(default=1800.0, gt=0)  # a 70B model can load for minutes
    stop_grace_s: float = Field(default=30.0, ge=0)
    log_lines: int = Field(default=200, ge=1, le=100_000)  # kept per engine, in memory
    wait_gpu_memory_s: float = Field(default=0.0, ge=0)  # wait this long for free memory
    liveness_interval_s: float = Field(default=5.0, gt=0)
    liveness_failures: int = Field(default=3, ge=1)
    restart: RestartSettings = RestartSettings()
    oom: OomSettings = OomSettings()
    warmup: WarmupSettings = WarmupSettings()

    @model_validator(mode="after")
    def _gpus(self) -> LaunchSpec:
        if self.gpus is not None:
            if len(set(self.gpus)) != len(self.gpus) or any(g < 0 for g in self.gpus):
                raise ValueError("gpus must be distinct GPU indices")
            if len(self.gpus) % self.tp:
                raise ValueError(
                    f"{len(self.gpus)} GPU(s) cannot be split into groups of tp={self.tp}"
                )
        return self


__all__ = ["LaunchSpec", "OomSettings", "RestartSettings", "WarmupSettings"]
