"""Roofline step-time model.

One engine step runs every scheduled token through the model once::

    t_step = max(t_compute, t_memory, t_cpu) + overhead
    t_compute = (2 * active_params * tokens + attention_flops) / (TP * peak_flops * mfu)
    t_memory  = (weight_bytes + kv_bytes_read) / (TP * hbm_bw * bw_eff)
    t_cpu     = cpu_per_seq * sequences_in_step   (API server and scheduler work per output,
                                                   overlapped with the GPU by async scheduling)
    t_stream  = stream_per_token * sequences_in_step   (a slower serial front end, below)
    attention_flops = 4 * layers * heads * head_dim * sum(tokens_i * context_i)

A step with LoRA adapters adds their kernels (``_lora_time``).

Decode steps are memory-bound (weights are streamed once per step, whatever the
batch), prefill chunks compute-bound, very large decode batches CPU-bound. Each
request also pays a fixed API-server overhead (tokenisation, hand-off to the engine)
before it is scheduled.

``stream_s_per_token`` is the serial cost per streamed token of a front end slower
than vLLM's own (0: it keeps up, its work is in ``cpu_per_seq_s``). One process
detokenises and streams every running request's tokens, so once the number of
running streams times that cost exceeds the GPU's step, the front end sets the pace
of every stream: TPOT grows with concurrency while the GPU idles. The engine core
runs in its own process, so the term overlaps the step rather than adding to it. A
new request waits in the same process behind one round of those tokens before it is
tokenised (``request_overhead_at``).
See docs/simulator.md for the sources and the calibration.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from gantry.sim.profiles import GPUProfile, ModelProfile


@dataclass(frozen=True, slots=True)
class StepShape:
    """What one step computes: tokens scheduled and the KV they attend over."""

    num_tokens: int
    attn_token_ctx: float  # sum over requests of tokens_in_step * context_len
    kv_tokens_read: int  # sum over requests of context length (KV read once per step)
    num_seqs: int
    lora_tokens: int = 0  # tokens of requests that use a LoRA adapter
    num_loras: int = 0  # distinct adapters in the step
    loras_loaded: int = 0  # adapters copied into a GPU slot before the step


@dataclass(frozen=True, slots=True)
class LatencyParams:
    mfu: float = 0.55  # achieved fraction of peak FLOPs in large matmuls
    bw_eff: float = 0.80  # achieved fraction of HBM bandwidth (~77% measured on A100)
    step_overhead_s: float = 0.0005  # launch and sampling per step, CUDA graphs on
    cpu_per_seq_s: float = 65e-6  # output processing per sequence per step (overlapped)
    request_overhead_s: float = 0.005  # API server: tokenise, hand off, first detokenise
    stream_s_per_token: float = 0.0  # serial front end per streamed token (0: keeps up)
    tp_overhead_s_per_layer: float = 12e-6  # two all-reduces per layer at TP > 1
    jitter: float = 0.0  # relative standard deviation of step time
    # LoRA (punica/SGMV kernels). Assumed, not fitted: the kernels reach a small fraction
    # of peak (~10%), and each layer's shrink/expand launches cost a few microseconds.
    lora_mfu: float = 0.10
    lora_s_per_layer: float = 8e-6


class LatencyModel:
    """Step times for one GPU type, one model, one tensor-parallel size."""

    def __init__(
        self,
        gpu: GPUProfile,
        model: ModelProfile,
        *,
        tp: int = 1,
        kv_dtype_bytes: float = 2.0,
        params: LatencyParams | None = None,
        seed: int = 0,
        instant: bool = False,
        lora_rank: int = 0,
    ) -> None:
        self.gpu, self.model, self.tp = gpu, model, max(1, tp)
        self.params = params or LatencyParams()
        self.instant = instant
        self._kv_bpt = model.kv_bytes_per_token(kv_dtype_bytes)
        self._flops_per_token = 2.0 * model.active_params
        self._attn_coeff = 4.0 * model.num_layers * model.num_heads * model.head_dim
        self._rng = random.Random(seed)
        p = self.params
        self._compute_rate = self.tp * gpu.peak_flops * p.mfu
        self._mem_rate = self.tp * gpu.hbm_bandwidth * p.bw_eff
        from gantry.sim.lora import PCIE_BYTES_PER_S, adapter_params

        # One adapter at the engine's max rank (vLLM pads every slot to it), per GPU.
        lora_params = adapter_params(model, lora_rank) / self.tp if lora_rank else 0
        self._lora_flops_per_token = 2.0 * lora_params
        self._lora_bytes = 2.0 * lora_params
        self._lora_copy_s = self._lora_bytes / PCIE_BYTES_PER_S
        self._lora_fixed = model.num_layers * p.lora_s_per_layer
        self._lora_rate = self.tp * gpu.peak_flops * p.lora_mfu
        self._fixed = p.step_overhead_s + (
            model.num_layers * p.tp_overhead_s_per_layer if self.tp > 1 else 0.0
        )

    def step_time(self, shape: StepShape) -> float:
        """Seconds for one step, before jitter and speed-up."""
        if self.instant or shape.num_tokens == 0:
            return 0.0
        flops = self._flops_per_token * shape.num_tokens + self._attn_coeff * shape.attn_token_ctx
        compute = flops / self._compute_rate
        memory = (self.model.weight_bytes + self._kv_bpt * shape.kv_tokens_read) / self._mem_rate
        p = self.params
        cpu = max(p.cpu_per_seq_s, p.stream_s_per_token) * shape.num_seqs
        t = max(compute, memory, cpu) + self._fixed
        if shape.num_loras and self._lora_bytes:
            t += self._lora_time(shape)
        if self.params.jitter:
            t *= max(0.3, self._rng.gauss(1.0, self.params.jitter))
        return t

    def _lora_time(self, shape: StepShape) -> float:
        """The LoRA kernels of a step: their own matmuls at low efficiency, each
        adapter's weights read once, slots filled over PCIe, per-layer launches."""
        compute = self._lora_flops_per_token * shape.lora_tokens / self._lora_rate
        memory = self._lora_bytes * shape.num_loras / self._mem_rate
        return max(compute, memory) + self._lora_fixed + shape.loras_loaded * self._lora_copy_s

    @property
    def request_overhead(self) -> float:
        """Seconds every request spends in the API server before scheduling."""
        return 0.0 if self.instant else self.params.request_overhead_s

    def request_overhead_at(self, running: int) -> float:
        """``request_overhead`` with ``running`` streams: the one front-end process
        tokenises a new request after the round of streamed tokens already queued."""
        if self.instant:
            return 0.0
        return self.params.request_overhead_s + self.params.stream_s_per_token * running

    def decode_time(self, batch: int, context: int) -> float:
        """Convenience: one decode step of ``batch`` sequences at ``context`` tokens."""
        return self.step_time(StepShape(batch, float(batch * context), batch * context, batch))

    def prefill_time(self, prompt_tokens: int, chunk: int) -> float:
        """Time to prefill one prompt alone in chunks of ``chunk`` tokens."""
        total, done = 0.0, 0
        for _ in range(math.ceil(prompt_tokens / chunk)):
            n = min(chunk, prompt_tokens - done)
            ctx = done + n
            total += self.step_time(StepShape(n, n * (done + ctx) / 2, ctx, 1))
            done += n
        return total
