"""Restart policy as pure functions: backoff, crash loop, out-of-memory restarts."""

from __future__ import annotations

import pytest

from gantry.supervisor.args import EngineArgs
from gantry.supervisor.policy import (
    Oom,
    OomBounds,
    OomKind,
    RestartConfig,
    RestartState,
    after_oom,
    classify_line,
    on_failure,
)

CFG = RestartConfig(
    backoff_initial_s=1,
    backoff_max_s=8,
    crash_loop_restarts=4,
    crash_loop_window_s=60,
    stable_after_s=30,
)


def run(failures: list[tuple[float, float]]) -> list[tuple[float, bool]]:
    """(time, ran_for) failures → (delay, crash_loop) decisions."""
    state, out = RestartState(), []
    for now, ran_for in failures:
        state, d = on_failure(state, CFG, now=now, ran_for=ran_for)
        out.append((d.delay_s, d.crash_loop))
    return out


def test_backoff_doubles_up_to_the_ceiling():
    decisions = run([(t, 0.5) for t in (0, 100, 200, 300, 400, 500)])
    assert [d for d, _ in decisions] == [1, 2, 4, 8, 8, 8]


def test_a_stable_run_resets_the_backoff():
    decisions = run([(0, 1), (10, 1), (20, 1), (100, 45)])
    assert [d for d, _ in decisions] == [1, 2, 4, 1]


def test_crash_loop_is_that_many_failures_inside_the_window():
    assert [c for _, c in run([(0, 1), (5, 1), (10, 1), (15, 1)])] == [False, False, False, True]
    # spread wider than the window: never a loop
    assert not any(c for _, c in run([(t * 61, 1) for t in range(10)]))


def test_the_failure_record_is_bounded():
    state = RestartState()
    for t in range(1000):
        state, _ = on_failure(state, CFG, now=float(t), ran_for=0)
    assert len(state.recent) == CFG.crash_loop_restarts


@pytest.mark.parametrize(
    ("line", "kind", "estimate"),
    [
        (
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
            OomKind.CUDA,
            None,
        ),
        ("RuntimeError: CUDA out of memory.", OomKind.CUDA, None),
        (
            "ValueError: No available memory for the cache blocks. "
            "Try increasing `gpu_memory_utilization`",
            OomKind.NO_KV_MEMORY,
            None,
        ),
        (
            "ValueError: To serve at least one request with the model's max seq len (131072), "
            "(16.00 GiB KV cache is needed, which is larger than the available KV cache memory "
            "(5.89 GiB). Based on the available memory, the estimated maximum model length "
            "is 48272.",
            OomKind.CONTEXT,
            48272,
        ),
        ("INFO: Avg prompt throughput: 0.0 tokens/s", None, None),
    ],
)
def test_out_of_memory_lines_are_recognised(line, kind, estimate):
    oom = classify_line(line)
    if kind is None:
        assert oom is None
    else:
        assert oom == Oom(kind, estimate)


ARGS = EngineArgs(
    dtype="bfloat16",
    gpu_memory_utilization=0.9,
    max_model_len=32768,
    max_num_seqs=64,
    max_num_batched_tokens=8192,
)


def test_cuda_oom_lowers_utilization_and_sequences_step_by_step_to_the_floors():
    args, seen = ARGS, []
    bounds = OomBounds(utilization_step=0.1, utilization_floor=0.6, seqs_floor=8)
    while True:
        d = after_oom(args, Oom(OomKind.CUDA), frozenset(), bounds)
        if d.args is None:
            assert "nothing left to lower" in d.message
            break
        args = d.args
        seen.append((args.gpu_memory_utilization, args.max_num_seqs))
        assert "restarting with" in d.message
    assert seen == [(0.8, 32), (0.7, 16), (0.6, 8)]
    assert args.max_model_len == ARGS.max_model_len


def test_oom_never_touches_what_the_user_set():
    d = after_oom(ARGS, Oom(OomKind.CUDA), frozenset({"gpu_memory_utilization"}))
    assert d.args is not None
    assert d.args.gpu_memory_utilization == 0.9 and d.args.max_num_seqs == 32
    pinned = frozenset({"gpu_memory_utilization", "max_num_seqs"})
    assert after_oom(ARGS, Oom(OomKind.CUDA), pinned).args is None


def test_no_kv_memory_lowers_the_batch_not_the_utilization():
    d = after_oom(ARGS, Oom(OomKind.NO_KV_MEMORY), frozenset())
    assert d.args is not None
    assert d.args.gpu_memory_utilization == 0.9
    assert (d.args.max_num_seqs, d.args.max_num_batched_tokens) == (32, 4096)
    assert "--max-num-batched-tokens 8192 → 4096" in d.message


def test_context_oom_takes_vllms_estimate():
    d = after_oom(ARGS, Oom(OomKind.CONTEXT, 20000), frozenset())
    assert d.args is not None and d.args.max_model_len == 19968
    assert after_oom(ARGS, Oom(OomKind.CONTEXT, 20000), frozenset({"max_model_len"})).args is None
