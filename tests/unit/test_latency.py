from __future__ import annotations

import pytest

from gantry.sim.latency import LatencyModel, LatencyParams, StepShape
from gantry.sim.profiles import gpu_profile, model_profile


@pytest.fixture
def h100_8b() -> LatencyModel:
    return LatencyModel(gpu_profile("H100"), model_profile("llama-3.1-8b"))


def test_decode_is_memory_bound_and_grows_slowly_with_batch(h100_8b):
    one = h100_8b.decode_time(1, 1000)
    sixty_four = h100_8b.decode_time(64, 1000)
    # Weights (16 GB) at ~2.7 TB/s effective: about 6 ms, plus overhead.
    assert 0.006 < one < 0.012
    assert sixty_four < one * 2  # batching is nearly free while memory-bound


def test_prefill_is_compute_bound_and_linear_in_tokens(h100_8b):
    t1k = h100_8b.prefill_time(1000, 8192)
    t4k = h100_8b.prefill_time(4000, 8192)
    assert 0.02 < t1k < 0.08
    assert 3.0 < t4k / t1k < 5.0


def test_tensor_parallel_divides_work():
    g, m = gpu_profile("H100"), model_profile("llama-3.1-70b")
    tp1 = LatencyModel(g, m, tp=1).decode_time(8, 1000)
    tp4 = LatencyModel(g, m, tp=4).decode_time(8, 1000)
    assert tp4 < tp1 / 2.5


def test_faster_gpu_is_faster_and_instant_is_zero():
    m = model_profile("qwen2.5-1.5b-instruct")
    l4 = LatencyModel(gpu_profile("L4"), m).decode_time(8, 500)
    h200 = LatencyModel(gpu_profile("H200"), m).decode_time(8, 500)
    assert h200 < l4
    assert (
        LatencyModel(gpu_profile("L4"), m, instant=True).step_time(StepShape(100, 1e4, 100, 1))
        == 0.0
    )


def test_awq_reads_fewer_weight_bytes():
    g = gpu_profile("T4")
    full = LatencyModel(g, model_profile("qwen2.5-1.5b-instruct")).decode_time(1, 100)
    awq = LatencyModel(g, model_profile("qwen2.5-1.5b-instruct-awq")).decode_time(1, 100)
    assert awq < full


def test_model_from_local_config(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(
        '{"hidden_size": 2048, "num_attention_heads": 16, "num_hidden_layers": 24,'
        ' "num_key_value_heads": 4, "intermediate_size": 5632, "vocab_size": 32000,'
        ' "max_position_embeddings": 4096}'
    )
    m = model_profile(str(cfg))
    assert m.num_layers == 24 and m.head_dim == 128 and m.max_model_len == 4096
    assert m.kv_bytes_per_token() == 2 * 24 * 4 * 128 * 2
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    with pytest.raises(ValueError):
        model_profile(str(bad))


def test_slow_front_end_paces_decode_and_delays_new_requests():
    g, m = gpu_profile("H100"), model_profile("llama-3.1-8b")
    default = LatencyModel(g, m)
    slow = LatencyModel(g, m, params=LatencyParams(stream_s_per_token=0.001))
    # One stream: the GPU's step is longer than one token of front-end work.
    assert slow.decode_time(1, 200) == pytest.approx(default.decode_time(1, 200))
    # 32 streams x 1 ms exceed the GPU's step: the front end sets the pace.
    assert slow.decode_time(32, 200) == pytest.approx(0.032 + 0.0005)
    assert default.decode_time(32, 200) < 0.01
    # A new request waits behind one round of the running streams' tokens.
    assert default.request_overhead_at(16) == default.request_overhead
    assert slow.request_overhead_at(16) == pytest.approx(slow.request_overhead + 0.016)
    instant = LatencyModel(g, m, instant=True, params=LatencyParams(stream_s_per_token=0.001))
    assert instant.request_overhead_at(16) == 0.0
