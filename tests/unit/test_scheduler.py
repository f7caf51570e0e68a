from __future__ import annotations

from gantry.sim.kvcache import KVCache
from gantry.sim.scheduler import Scheduler, SchedulerConfig
from gantry.sim.sequence import SamplingSpec, SimRequest, Status
from gantry.sim.tokenizer import BuiltinTokenizer

TOK = BuiltinTokenizer()


def req(n_prompt: int, max_tokens: int = 4, rid: str = "r", prompt: list[int] | None = None):
    return SimRequest(
        rid,
        prompt or list(range(300, 300 + n_prompt)),
        SamplingSpec(max_tokens=max_tokens, ignore_eos=True),
        TOK,
        0.0,
    )


def run_to_end(s: Scheduler, limit: int = 10_000) -> int:
    steps = 0
    while s.has_work and steps < limit:
        s.complete(s.schedule())
        steps += 1
    return steps


def test_chunked_prefill_respects_token_budget():
    s = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64), KVCache(100, 16))
    r = req(150)
    s.add(r)
    step = s.schedule()
    assert step.items == [(r, 64)] and step.prefill_tokens == 64
    s.complete(step)
    assert r.num_computed == 64 and not r.output_token_ids
    s.complete(s.schedule())
    step = s.schedule()
    assert step.items[0][1] == 150 - 128  # last chunk
    out = s.complete(step)
    assert len(out) == 1 and len(r.output_token_ids) == 1  # first token after prefill


def test_decode_is_one_token_per_running_request_and_max_num_seqs_caps_batch():
    s = Scheduler(SchedulerConfig(max_num_seqs=2, max_num_batched_tokens=512), KVCache(100, 16))
    rs = [req(10, rid=f"r{i}") for i in range(3)]
    for r in rs:
        s.add(r)
    step = s.schedule()
    assert [x[0] for x in step.items] == rs[:2]  # FCFS, capped at 2
    s.complete(step)
    step = s.schedule()
    assert all(n == 1 for _, n in step.items) and step.decode_tokens == 2
    run_to_end(s)
    assert all(r.status is Status.FINISHED and len(r.output_token_ids) == 4 for r in rs)


def test_preemption_by_recompute_when_blocks_run_out():
    kv = KVCache(6, 4)  # 5 usable blocks = 20 tokens
    s = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64), kv)
    a, b = req(7, max_tokens=8, rid="a"), req(7, max_tokens=8, rid="b")
    s.add(a)
    s.add(b)
    preempted = 0
    for _ in range(200):
        if not s.has_work:
            break
        step = s.schedule()
        preempted += len(step.preempted)
        s.complete(step)
    assert preempted >= 1
    assert b.num_preemptions >= 1 or a.num_preemptions >= 1
    assert a.status is Status.FINISHED and b.status is Status.FINISHED
    assert len(a.output_token_ids) == 8 and len(b.output_token_ids) == 8
    kv.check_invariants()
    assert kv.usage == 0.0


def test_prefix_cache_hit_skips_computed_blocks():
    kv = KVCache(100, 16)
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=4096), kv)
    prompt = list(range(400, 464))  # 64 tokens = 4 blocks
    first = req(64, prompt=prompt)
    s.add(first)
    run_to_end(s)
    second = req(64, rid="b", prompt=[*prompt, 1, 2, 3])
    s.add(second)
    step = s.schedule()
    assert second.num_cached_prompt == 64
    assert step.cache_hit_tokens == 64 and step.items[0][1] == 3


def test_abort_frees_blocks():
    kv = KVCache(20, 16)
    s = Scheduler(SchedulerConfig(), kv)
    r = req(100, max_tokens=100)
    s.add(r)
    s.complete(s.schedule())
    assert kv.usage > 0
    assert s.abort(r)
    assert r.finish_reason == "abort" and kv.usage == 0.0 and not s.has_work


def test_stop_string_and_min_tokens():
    spec = SamplingSpec(max_tokens=50, stop=(" the",), min_tokens=0, seed=3)
    r = SimRequest("s", [1, 2, 3], spec, TOK, 0.0)
    while r.status is not Status.FINISHED:
        r.sample()
    assert r.finish_reason in ("stop", "length")
    if r.stop_reason == " the":
        assert " the" not in r.text
    # Same seed and prompt: same text.
    r2 = SimRequest("s2", [1, 2, 3], SamplingSpec(max_tokens=50, stop=(" the",), seed=3), TOK, 0)
    while r2.status is not Status.FINISHED:
        r2.sample()
    assert r2.text == r.text


def test_async_scheduling_a_request_arriving_during_a_step_skips_the_next_one():
    """vLLM chooses step k+1's batch when step k launches: a request that arrives
    while step k runs joins step k+2. An idle engine schedules it at once."""
    for on, joins_at in ((True, 2), (False, 1)):
        cfg = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=512, async_scheduling=on)
        s = Scheduler(cfg, KVCache(100, 16))
        first = req(10, max_tokens=8, rid="first")
        s.add(first)  # idle engine: scheduled in the very next step
        step = s.schedule()
        assert step.items == [(first, 10)]
        late = req(10, rid="late")
        s.add(late)  # arrives while that step runs
        s.complete(step)
        steps = []
        for _ in range(2):
            steps.append(s.schedule())
            s.complete(steps[-1])
        admitted = [i + 1 for i, st in enumerate(steps) if (late, 10) in st.items]
        assert admitted == [joins_at]
        assert all((first, 1) in st.items for st in steps)  # its decodes go on meanwhile


def test_async_scheduling_does_not_hold_a_request_when_nothing_runs():
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=512), KVCache(100, 16))
    a = req(10, max_tokens=1, rid="a")
    s.add(a)
    s.complete(s.schedule())  # a finishes in its prefill step
    b = req(10, rid="b")
    s.add(b)
    assert s.schedule().items == [(b, 10)]
