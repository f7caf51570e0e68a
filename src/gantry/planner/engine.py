"""From a model, a GPU and engine arguments to the simulator's resolved engine.

The arguments are the supervisor's derivation (``gantry engine`` would start vLLM with
them); the KV cache, the scheduler limits and the latency model are then exactly the
simulator's for those arguments, as ``gantry engine --simulate`` would run them.
"""

from __future__ import annotations

from dataclasses import dataclass

from gantry.errors import ConfigError
from gantry.sim.profiles import GPUProfile
from gantry.sim.settings import ResolvedSim, SimConfigError, SimSettings, resolve
from gantry.supervisor.args import Derivation, EngineArgs, derive
from gantry.supervisor.cmdline import UserArgs
from gantry.supervisor.model import ModelInfo


@dataclass(frozen=True, slots=True)
class Engine:
    """One engine (one replica of ``tp`` GPUs) as planned."""

    derivation: Derivation
    resolved: ResolvedSim

    @property
    def args(self) -> EngineArgs:
        return self.derivation.args

    @property
    def tp(self) -> int:
        return self.args.tensor_parallel_size

    @property
    def kv_blocks(self) -> int:
        return self.resolved.num_gpu_blocks

    @property
    def block_size(self) -> int:
        return self.resolved.settings.block_size

    @property
    def kv_tokens(self) -> int:
        return self.kv_blocks * self.block_size

    def max_concurrent(self, tokens_per_request: float) -> int:
        """Sequences running at once: ``max_num_seqs``, or fewer if the KV cache holds
        fewer requests of this size."""
        fit = int(self.kv_tokens // max(1.0, tokens_per_request))
        return min(self.args.max_num_seqs, fit)

    def vllm_serve(self) -> str:
        return " ".join(["vllm serve", self.derivation.model.vllm_model, *self.args.argv()])


def plan_engine(model: ModelInfo, gpu: GPUProfile, tp: int, user: UserArgs | None = None) -> Engine:
    """Derive the arguments (``DoesNotFit``/``ConfigError`` in one line) and resolve the
    simulated engine they describe."""
    d = derive(model, gpu, tp=tp, user=user)
    a = d.args
    settings = SimSettings(
        model=model.vllm_model,
        gpu=gpu.name,
        tensor_parallel_size=tp,
        max_model_len=a.max_model_len,
        gpu_memory_utilization=a.gpu_memory_utilization,
        kv_cache_dtype=a.kv_cache_dtype,
        max_num_seqs=a.max_num_seqs,
        max_num_batched_tokens=a.max_num_batched_tokens,
        enable_prefix_caching=a.enable_prefix_caching,
        enable_chunked_prefill=a.enable_chunked_prefill,
        dtype=a.dtype,
        quantization=a.quantization,
    )
    try:
        resolved = resolve(settings, gpu, model.profile)
    except SimConfigError as exc:
        raise ConfigError(str(exc)) from None
    return Engine(d, resolved)


__all__ = ["Engine", "plan_engine"]
