"""vLLM's Prometheus metrics (names, types, labels and buckets of vLLM v0.33)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REQUEST_LATENCY: list[float] = [
    0.3,
    0.5,
    0.8,
    1,
    1.5,
    2,
    2.5,
    5,
    10,
    15,
    20,
    30,
    40,
    50,
    60,
    120,
    240,
    480,
    960,
    1920,
    7680,
]
TTFT: list[float] = [
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1,
    2.5,
    5,
    7.5,
    10,
    20,
    40,
    80,
    160,
    640,
    2560,
]
ITL: list[float] = [
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1,
    2.5,
    5,
    7.5,
    10,
    20,
    40,
    80,
]
ITERATION: list[float] = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
PARAMS_N: list[float] = [1, 2, 5, 10, 20]
NUM_PREEMPTIONS: list[float] = [1, 2, 3, 4, 5, 10, 20]
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
WAITING_REASONS = ("capacity", "deferred")
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")


def request_token_buckets(max_model_len: int) -> list[float]:
    """vLLM's 1-2-5 series up to max_model_len."""
    out: list[float] = []
    base = 1
    while True:
        for m in (1, 2, 5):
            v = m * base
            if v > max_model_len:
                return out
            out.append(float(v))
        base *= 10


def cache_config_labels(
    *,
    block_size: int,
    cache_dtype: str,
    enable_prefix_caching: bool,
    gpu_memory_utilization: float,
    num_gpu_blocks: int,
) -> dict[str, str]:
    """vllm:cache_config_info's labels: CacheConfig's fields, str()-ed as vLLM does."""
    return {
        "block_size": str(block_size),
        "cache_dtype": cache_dtype,
        "enable_prefix_caching": str(enable_prefix_caching),
        "gpu_memory_utilization": str(gpu_memory_utilization),
        "num_gpu_blocks": str(num_gpu_blocks),
        "num_gpu_blocks_override": "None",
        "prefix_caching_hash_algo": "sha256",
        "kv_cache_memory_bytes": "None",
        "kv_offloading_size": "None",
    }


class SimMetrics:
    """One registry per engine so several engines can live in one process (tests)."""

    def __init__(self, model_name: str, max_model_len: int, engine: str = "0") -> None:
        self.registry = reg = CollectorRegistry()
        self._engine = engine
        labels = ["model_name", "engine"]
        lv = {"model_name": model_name, "engine": engine}
        tok_buckets = request_token_buckets(max_model_len)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=reg)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=reg)

        def hist(name: str, doc: str, buckets: list[float]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=reg)

        self.running = gauge("vllm:num_requests_running", "Requests in the running batch.")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent.")
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in tokens."
        )
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemptions.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.prompt_by_source = Counter(
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            [*labels, "source"],
            registry=reg,
        )
        self.prompt_cached = counter(
            "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external)."
        )
        self.prompt_recomputed = counter(
            "vllm:prompt_tokens_recomputed",
            "Number of cached tokens recomputed for forward pass.",
        )
        self.waiting_by_reason = Gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason (capacity, deferred).",
            [*labels, "reason"],
            registry=reg,
        )
        self.sleep_state = Gauge(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 1 means engine is awake.",
            [*labels, "sleep_state"],
            registry=reg,
        )
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        self.success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
            registry=reg,
        )
        self.ttft = hist("vllm:time_to_first_token_seconds", "Time to first token.", TTFT)
        self.itl = hist("vllm:inter_token_latency_seconds", "Inter-token latency.", ITL)
        self.tpot = hist(
            "vllm:request_time_per_output_token_seconds",
            "Time per output token per request.",
            ITL,
        )
        self.e2e = hist("vllm:e2e_request_latency_seconds", "End-to-end latency.", REQUEST_LATENCY)
        self.queue_time = hist(
            "vllm:request_queue_time_seconds", "Time spent in WAITING.", REQUEST_LATENCY
        )
        self.inference_time = hist(
            "vllm:request_inference_time_seconds", "Time spent in RUNNING.", REQUEST_LATENCY
        )
        self.prefill_time = hist(
            "vllm:request_prefill_time_seconds", "Time spent in PREFILL.", REQUEST_LATENCY
        )
        self.decode_time = hist(
            "vllm:request_decode_time_seconds", "Time spent in DECODE.", REQUEST_LATENCY
        )
        self.req_prompt_tokens = hist(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", tok_buckets
        )
        self.req_gen_tokens = hist(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", tok_buckets
        )
        self.req_max_tokens = hist(
            "vllm:request_params_max_tokens", "The max_tokens request parameter.", tok_buckets
        )
        self.req_max_gen = hist(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            tok_buckets,
        )
        self.req_n = hist("vllm:request_params_n", "The n request parameter.", PARAMS_N)
        self.req_preemptions = hist(
            "vllm:request_num_preemptions", "Preemptions per finished request.", NUM_PREEMPTIONS
        )
        self.req_prefill_kv = hist(
            "vllm:request_prefill_kv_computed_tokens",
            "New KV tokens computed during prefill (excluding cached tokens).",
            tok_buckets,
        )
        self.iteration_tokens = hist(
            "vllm:iteration_tokens_total", "Number of tokens per engine step.", ITERATION
        )
        self.admission_rejections = Counter(
            "vllm:admission_rejections",
            "Requests refused by --max-num-queued-reqs/-tokens (HTTP 503).",
            [*labels, "reason"],
            registry=reg,
        )
        self.faults = Counter(
            "gantry_sim_faults", "Faults injected by the simulator.", ["kind"], registry=reg
        )
        self.step_seconds = Counter(
            "gantry_sim_step_seconds",
            "Engine step time: modelled and wall-clock.",
            ["clock"],
            registry=reg,
        )
        self.steps = Counter("gantry_sim_steps", "Engine steps run.", registry=reg)

        # Bind label values once: .labels() costs ~1 us per call on the hot path.
        self.running_l = self.running.labels(**lv)
        self.waiting_l = self.waiting.labels(**lv)
        self.kv_usage_l = self.kv_usage.labels(**lv)
        self.prefix_queries_l = self.prefix_queries.labels(**lv)
        self.prefix_hits_l = self.prefix_hits.labels(**lv)
        self.preemptions_l = self.preemptions.labels(**lv)
        self.prompt_tokens_l = self.prompt_tokens.labels(**lv)
        self.prompt_by_source_l = {
            src: self.prompt_by_source.labels(**lv, source=src) for src in PROMPT_SOURCES
        }
        self.prompt_cached_l = self.prompt_cached.labels(**lv)
        self.prompt_recomputed.labels(**lv)  # always 0: a hit never covers the whole prompt
        self.waiting_by_reason_l = {
            r: self.waiting_by_reason.labels(**lv, reason=r) for r in WAITING_REASONS
        }
        for state in SLEEP_STATES:  # the simulator never sleeps
            self.sleep_state.labels(**lv, sleep_state=state).set(state == "awake")
        self.generation_tokens_l = self.generation_tokens.labels(**lv)
        self.success_l = {r: self.success.labels(**lv, finished_reason=r) for r in FINISH_REASONS}
        self.ttft_l = self.ttft.labels(**lv)
        self.itl_l = self.itl.labels(**lv)
        self.tpot_l = self.tpot.labels(**lv)
        self.e2e_l = self.e2e.labels(**lv)
        self.queue_time_l = self.queue_time.labels(**lv)
        self.inference_time_l = self.inference_time.labels(**lv)
        self.prefill_time_l = self.prefill_time.labels(**lv)
        self.decode_time_l = self.decode_time.labels(**lv)
        self.req_prompt_tokens_l = self.req_prompt_tokens.labels(**lv)
        self.req_gen_tokens_l = self.req_gen_tokens.labels(**lv)
        self.req_max_tokens_l = self.req_max_tokens.labels(**lv)
        self.req_max_gen_l = self.req_max_gen.labels(**lv)
        self.req_n_l = self.req_n.labels(**lv)
        self.req_preemptions_l = self.req_preemptions.labels(**lv)
        self.req_prefill_kv_l = self.req_prefill_kv.labels(**lv)
        self.iteration_tokens_l = self.iteration_tokens.labels(**lv)
        self.step_model_l = self.step_seconds.labels(clock="model")
        self.step_wall_l = self.step_seconds.labels(clock="wall")

    def set_cache_config(self, labels: dict[str, str]) -> None:
        """vllm:cache_config_info: an info gauge (value 1) whose labels are the config."""
        info = Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            ["engine", *labels],
            registry=self.registry,
        )
        info.labels(engine=self._engine, **labels).set(1)
